"""Training losses of the TSCD recipe (spec §5–§9), as nn.Modules built on tscd.ops."""
