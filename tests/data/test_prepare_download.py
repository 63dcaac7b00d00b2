"""The download path of ``tscd data``, against a local HTTP server (Range requests, a connection
that breaks off, 404) and a ``file://`` mirror: never the network."""
import http.server
import threading
from pathlib import Path

import pytest

from tests.data import prepare_fixtures as fx
from tscd.cli import main
from tscd.data.prepare import voc as prep

VOC_ARCHIVES = ("VOCtrainval_11-May-2012.tar", "benchmark.tgz")


class _Server:
    """Serves a folder over HTTP with Range support; ``cut[name] = n`` breaks the next response
    for ``name`` off after n bytes; ``log`` records (path, Range header) of every request."""

    def __init__(self, folder: Path):
        self.folder, self.cut, self.log = folder, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                byte_range = self.headers.get("Range")
                server.log.append((name, byte_range))
                path = server.folder / name
                if not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                start = int(byte_range.split("=")[1].split("-")[0]) if byte_range else 0
                self.send_response(206 if byte_range else 200)
                if byte_range:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.cut:
                    body = body[:server.cut.pop(name)]
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return fx.make_voc_archives(tmp_path_factory.mktemp("voc_archives"))


@pytest.fixture
def server(archives, monkeypatch):
    fx.official(monkeypatch, archives, VOC_ARCHIVES)
    monkeypatch.setattr(prep, "EXPECTED", {"train_aug": fx.list_expectation(fx.TRAIN_AUG),
                                           "val": fx.list_expectation(fx.VAL)})
    monkeypatch.setattr(prep, "KNOWN", {})
    s = _Server(archives)
    yield s
    s.close()


def _run(capsys, *args):
    rc = main(["data", "voc", *map(str, args)])
    out = capsys.readouterr()
    return rc, [s for s in out.out.splitlines() if s.strip()], [s for s in out.err.splitlines() if s.strip()]


def test_a_broken_download_resumes_with_a_range_request(tmp_path, capsys, server, archives):
    size = (archives / "benchmark.tgz").stat().st_size
    server.cut["benchmark.tgz"] = 700
    rc, _, err = _run(capsys, tmp_path / "d", "--mirror", server.url)
    assert rc == 1 and err == [f"tscd: error: the download of benchmark.tgz from {server.url}/benchmark.tgz broke "
                               f"off at 700 of {size:,} bytes; run the same command again to resume, or download "
                               f"{server.url}/benchmark.tgz by hand and pass --from FOLDER"]
    part = tmp_path / "d" / "downloads" / "benchmark.tgz.part"
    assert part.stat().st_size == 700
    rc, out, _ = _run(capsys, tmp_path / "d", "--mirror", server.url)
    assert rc == 0 and out[-1].endswith("VOCdevkit/VOC2012")
    assert server.log == [("VOCtrainval_11-May-2012.tar", None), ("benchmark.tgz", None),
                          ("benchmark.tgz", "bytes=700-")]  # the finished tar is not fetched again
    assert (tmp_path / "d/downloads/benchmark.tgz").read_bytes() == (archives / "benchmark.tgz").read_bytes()
    assert not part.exists()
    rc, out, _ = _run(capsys, tmp_path / "d", "--mirror", server.url)  # done: nothing is contacted
    assert rc == 0 and len(server.log) == 3


def test_a_file_url_mirror_and_the_same_tree_as_from(tmp_path, capsys, server, archives):
    assert _run(capsys, tmp_path / "a", "--mirror", archives.as_uri())[0] == 0
    assert _run(capsys, tmp_path / "b", "--from", archives)[0] == 0
    assert fx.tree_bytes(tmp_path / "a" / "VOCdevkit") == fx.tree_bytes(tmp_path / "b" / "VOCdevkit")
    assert server.log == []


def test_a_missing_file_and_a_bad_download_are_one_line(tmp_path, capsys, server, archives):
    rc, _, err = _run(capsys, tmp_path / "d", "--mirror", server.url + "/elsewhere")
    assert rc == 1 and err == [f"tscd: error: cannot download VOCtrainval_11-May-2012.tar from {server.url}/elsewhere/"
                               "VOCtrainval_11-May-2012.tar: HTTP 404 Not Found; download it by hand and pass --from "
                               "FOLDER"]
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in VOC_ARCHIVES:
        (wrong / name).write_bytes((archives / name).read_bytes())
    data = bytearray((wrong / "benchmark.tgz").read_bytes())
    data[10] ^= 1
    (wrong / "benchmark.tgz").write_bytes(bytes(data))
    rc, _, err = _run(capsys, tmp_path / "e", "--mirror", wrong.as_uri())
    target = tmp_path / "e" / "downloads" / "benchmark.tgz"
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"tscd: error: {target} is not the official benchmark.tgz")
    assert f"move {target} away and run again to download it anew" in err[0]
