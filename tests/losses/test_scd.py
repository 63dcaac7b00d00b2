"""SelfCorrespondenceDistillation: sampling like the released code, then scd_loss."""
import pytest
import torch
import torch.nn.functional as F

from tscd.losses import SelfCorrespondenceDistillation
from tscd.ops import scd_loss


def _maps(seed=0, B=2, C=4, K=5, size1=(9, 11), size2=(4, 5)):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, *size1, generator=gen), torch.randn(B, C, *size2, generator=gen),
            torch.randn(B, K, *size1, generator=gen), torch.randn(B, K, *size2, generator=gen))


def test_dense_is_scd_loss():
    t1, t2, s1, s2 = _maps()
    torch.testing.assert_close(SelfCorrespondenceDistillation(None)(t1, t2, s1, s2), scd_loss(t1, t2, s1, s2))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_sampled_matches_manual_sampling(backend):
    t1, t2, s1, s2 = _maps(1)
    torch.manual_seed(7)
    loss = SelfCorrespondenceDistillation(6, backend=backend)(t1, t2, s1, s2)
    torch.manual_seed(7)
    grid1 = torch.rand(2, 6, 6, 2) * 2 - 1
    grid2 = torch.rand(2, 6, 6, 2) * 2 - 1

    def sample(x, grid):
        return F.grid_sample(x, grid, padding_mode="border", align_corners=True).flatten(2)

    expected = scd_loss(sample(t1, grid1), sample(t2, grid2), sample(s1, grid1), sample(s2, grid2), backend="torch")
    torch.testing.assert_close(loss, expected)


def test_teacher_and_student_of_a_view_share_positions(monkeypatch):
    """With t = s in each view, shared positions give identical teacher and student samples."""
    import tscd.losses.scd as module_file

    t1, t2, _, _ = _maps(2, C=3, K=3)
    seen = []
    monkeypatch.setattr(module_file, "scd_loss", lambda *args, backend: seen.append(args) or scd_loss(*args))
    SelfCorrespondenceDistillation(5)(t1, t2, t1.clone(), t2.clone())
    t1s, t2s, s1s, s2s = seen[0]
    assert t1s.shape == (2, 3, 25) and t2s.shape == (2, 3, 25)
    torch.testing.assert_close(t1s, s1s)
    torch.testing.assert_close(t2s, s2s)
    assert not torch.allclose(t1s[0], t1s[1])  # positions are drawn per image


def test_gradients_reach_students_only():
    t1, t2, s1, s2 = _maps(3)
    for x in (t1, t2, s1, s2):
        x.requires_grad_()
    SelfCorrespondenceDistillation(4)(t1, t2, s1, s2).backward()
    assert t1.grad is None and t2.grad is None
    assert s1.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0


def test_default_is_forty_samples():
    module = SelfCorrespondenceDistillation()
    assert module.num_samples == 40 and "num_samples=40" in repr(module)
    assert SelfCorrespondenceDistillation(1)(*_maps(4)).dim() == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, "40"])
def test_bad_num_samples(bad):
    with pytest.raises(ValueError, match="num_samples"):
        SelfCorrespondenceDistillation(bad)


def test_sampling_needs_maps():
    t1, t2, s1, s2 = _maps()
    with pytest.raises(ValueError, match=r"s2 must have shape \(B, K, H2, W2\)"):
        SelfCorrespondenceDistillation(4)(t1, t2, s1, s2.flatten(2))
