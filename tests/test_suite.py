"""The suite end to end on the smoke profile: notebooks run headless, records written, report built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import profiles, report, suite
from helpers.core import config


def _run_suite(args, env_extra, tmp_path):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "helpers.suite", *args], cwd=config.PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _pdf_pages(path: Path) -> list[dict]:
    """Text and image count of every page, and proof each page renders to pixels."""
    import pypdfium2 as pdfium

    pages = []
    for page in pdfium.PdfDocument(str(path)):
        text = page.get_textpage().get_text_range()
        images = sum(1 for obj in page.get_objects() if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE)
        pixels = page.render(scale=0.5).to_pil().convert("L")
        pages.append({"text": text, "images": images, "ink": pixels.getextrema()})
    return pages


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, run_cache):
    """The whole smoke suite, cold, on the test run's cache (``run_cache``): nbmake's notebook runs,
    collected after ``tests/``, reuse what it trained and encoded."""
    base = tmp_path_factory.mktemp("suite")
    env = {"CLIPLAB_OUT": str(base / "out"), "CLIPLAB_CACHE": str(run_cache), "CLIPLAB_WORKERS": "0"}
    proc = _run_suite(["--profile", "smoke", "--out", str(base / "runs")], env, base)
    return proc, base


def test_smoke_suite_passes_and_writes_records(smoke_run):
    proc, base = smoke_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [p.name for p in suite.notebooks()]
    assert f"{len(names)}/{len(names)} ok" in proc.stdout
    listed = proc.stdout.split("trainings in this run", 1)[1]  # every training of the run, by notebook
    for line in ("03  03 learned SR (ESPCN x4)", "03  03 torchvision:resnet18 classifier", "05  05 torchvision:resnet18",
                 "06  06 ML fine-tuning", "06  06 CS fine-tuning"):
        assert line in listed, listed
    for name in names:
        executed = json.loads((base / "runs" / "smoke" / name).read_text())
        assert any(c.get("outputs") for c in executed["cells"]), f"{name} executed copy has no outputs"
    results = base / "out" / "supplementary" / "smoke" / "results"
    zs = [json.loads(line) for line in (results / "01_zero_shot.jsonl").read_text().splitlines()]
    assert {r["model"]["spec"] for r in zs} == set(profiles.load("smoke").models)
    for r in zs:  # the protocol card is complete
        assert r["dataset"]["split"] == "test" and r["dataset"]["n_images"] > 0
        assert len(r["model"]["weights_sha256"]) == 64 and r["untrained"] is True
        assert r["protocol"]["templates"] and r["protocol"]["transform"]["resize"] > 0
        assert r["versions"]["torch"] and r["wall_time_s"] > 0 and r["profile"] == "smoke"
        assert all((base / "out" / f).is_file() for f in r["figures"])
    pv = [json.loads(line) for line in (results / "02_prompt_validation.jsonl").read_text().splitlines()]
    chosen = [r for r in pv if r["protocol"]["chosen_on_val"]]
    assert len(chosen) == len(profiles.load("smoke").models)
    for r in chosen:  # the chosen prompt is the val argmax among that model's prompts
        same_model = [q for q in pv if q["model"]["spec"] == r["model"]["spec"]]
        assert r["metrics"]["val_top1"] == max(q["metrics"]["val_top1"] for q in same_model)


def test_smoke_report_pdf_holds_tables_and_figures(smoke_run):
    proc, base = smoke_run
    folder = base / "out" / "supplementary" / "smoke"
    for name in ("results.csv", "results.md", "report.md", "report.html", "report.pdf"):
        assert (folder / name).stat().st_size > 0, name
    pages = _pdf_pages(folder / "report.pdf")
    text = "\n".join(p["text"] for p in pages)
    assert "CLIP lab report" in text and "Zero-shot classification" in text and "Prompt validation" in text
    for spec in profiles.load("smoke").models:  # each model is a table row
        assert spec.split(":")[1][:8] in text
    assert "untrained" in text and "balanced" in text  # table header and masked cells
    figures = {f for r in json.loads("[" + ",".join(
        (folder / "results" / "01_zero_shot.jsonl").read_text().split("\n")[:-1]) + "]") for f in r["figures"]}
    assert sum(p["images"] for p in pages) >= len(figures) + 2  # 01's figures and 02's bars + per-class
    assert all(p["ink"][0] < 128 for p in pages), "a page rendered blank"


def test_failing_notebook_is_reported_and_others_still_run(tmp_path, run_cache):
    """On the run's cache: 02's features are those the smoke run encoded."""
    env = {"CLIPLAB_OUT": str(tmp_path / "out"), "CLIPLAB_CACHE": str(run_cache), "CLIPLAB_WORKERS": "0"}
    missing = tmp_path / "no-such-folder"  # only 01 reads extra_datasets; the preflight would refuse it
    proc = _run_suite(["--profile", "smoke", "--only", "01,02", "--no-report", "--out", str(tmp_path / "runs"),
                       "--skip-preflight", "-p", f"extra_datasets=[{missing}]"], env, tmp_path)
    assert proc.returncode == 1
    assert "FAILED 01_zero_shot" in proc.stdout and str(missing) in proc.stdout  # its failing cell
    assert "ok     02_prompt_validation" in proc.stdout and "1/2 ok" in proc.stdout  # 02 ran all the same


def test_paper_profile_offline_stops_at_once_with_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPLAB_DATA", str(tmp_path / "nodata"))
    monkeypatch.setattr(profiles, "_reachable", lambda url, timeout=3.0: False)
    code = suite.main(["--profile", "paper", "--no-report", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "nodata" / "eurosat_rgb") in err  # the dataset folder
    assert "RN50.pt" in err and "ViT-B-32.pt" in err and str(config.cache_dir() / "clip") in err  # weights
    assert "--profile smoke" in err and "--profile offline" in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_report_of_no_records_says_so(tmp_path):
    written = report.build("smoke")
    assert "No records yet" in written["report.md"].read_text()


class _ProxyStub:
    """A local HTTPS proxy stand-in on 127.0.0.1: answers every CONNECT with ``status`` and records it."""

    def __init__(self, status: int = 200):
        import socket
        import threading

        self.status, self.requests = status, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(4096).decode().split("\r\n", 1)[0])
                conn.sendall(f"HTTP/1.1 {self.status} Stub\r\n\r\n".encode())

    def close(self):
        self.sock.close()


@pytest.fixture
def direct_connections_fail(monkeypatch):
    """No direct route out (as behind a corporate proxy): only the loopback stub can be reached."""
    import socket

    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] != "127.0.0.1":
            raise OSError("no route to host (test)")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    for var in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    profiles._reachable.cache_clear()
    yield
    profiles._reachable.cache_clear()


def test_preflight_goes_through_the_https_proxy_like_the_downloads(tmp_path, monkeypatch, direct_connections_fail):
    """Issue 20: behind HTTPS_PROXY the download hosts are reachable through the proxy's tunnel."""
    monkeypatch.setenv("CLIPLAB_DATA", str(tmp_path / "nodata"))
    url = profiles.EUROSAT_URL
    assert not profiles._reachable(url)  # no proxy, no direct route: unreachable
    stub = _ProxyStub(200)
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{stub.port}")
        profiles._reachable.cache_clear()
        problems = profiles.load("paper").preflight()
        assert not any("cannot be reached" in p for p in problems), problems
        assert not any("ViT-B-32.pt" in p or "RN50.pt" in p for p in problems), problems  # downloadable
        assert f"CONNECT {profiles._host(url)}:443 HTTP/1.1" in stub.requests
        monkeypatch.setenv("NO_PROXY", profiles._host(url))  # a bypassed host goes direct again
        profiles._reachable.cache_clear()
        assert not profiles._reachable(url)
    finally:
        stub.close()


def test_preflight_refuses_when_the_proxy_refuses_the_tunnel(monkeypatch, direct_connections_fail):
    stub = _ProxyStub(403)
    try:
        monkeypatch.setenv("https_proxy", f"127.0.0.1:{stub.port}")  # scheme-less form, lower case
        assert not profiles._reachable(profiles.EUROSAT_URL)
        assert stub.requests and stub.requests[0].startswith("CONNECT ")
    finally:
        stub.close()


def test_skip_preflight_is_explicit_and_said(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPLAB_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("CLIPLAB_PROFILE", "smoke")  # the suite sets it for its notebooks; restored after
    monkeypatch.setattr(profiles, "_reachable", lambda url, timeout=3.0: False)
    assert suite.main(["--profile", "paper", "--no-report", "--out", str(tmp_path / "runs")]) == 2
    assert "--skip-preflight" in capsys.readouterr().err  # the refusal names the way round it
    monkeypatch.setattr(suite, "notebooks", lambda only=None: [])  # start nothing: only the gate is tested
    assert suite.main(["--profile", "paper", "--no-report", "--skip-preflight", "--out", str(tmp_path / "runs")]) == 0
    assert "preflight skipped (--skip-preflight)" in capsys.readouterr().err


def test_unwritable_output_folder_stops_before_any_work_with_one_message(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CLIPLAB_OUT", str(blocker / "out"))  # a path under a regular file
    monkeypatch.setenv("CLIPLAB_PROFILE", "smoke")
    code = suite.main(["--profile", "smoke", "--no-report", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and "CLIPLAB_OUT" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "smoke").exists() or not any((tmp_path / "runs" / "smoke").iterdir())


def test_preflight_checks_only_what_the_selected_notebooks_need(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "_reachable", lambda url, timeout=3.0: False)
    P = profiles.load("offline", {"upsampling.srgan_dir": str(tmp_path / "no-weights")})
    monkeypatch.setenv("CLIPLAB_DATA", str(tmp_path))  # EuroSAT "present" is not what is tested here
    everything = "\n".join(P.preflight())
    assert "SRGAN x4 weights are not at" in everything
    only_01 = "\n".join(P.preflight(["01"]))
    assert "SRGAN" not in only_01
    paper = profiles.load("paper")
    assert not any("RN50.pt" in p for p in paper.preflight(["05"]))  # 05 loads backbones, not CLIP
    assert any("RN50.pt" in p for p in paper.preflight(["01"]))


def test_ctrl_c_on_the_suite_stops_cleanly_naming_the_notebook_and_keeps_the_records(tmp_path):
    """SIGINT to the suite's process group (Ctrl-C in a terminal) once notebook 06 has recorded its
    first results and trains: exit 130, one message naming 06, those records whole, no half-written
    executed notebook left."""
    import signal
    import time

    env = {**os.environ, "CLIPLAB_OUT": str(tmp_path / "out"), "CLIPLAB_CACHE": str(tmp_path / "cache"),
           "CLIPLAB_WORKERS": "0"}
    args = [sys.executable, "-m", "helpers.suite", "--profile", "smoke", "--only", "06", "--no-report",
            "--out", str(tmp_path / "runs"), "-p", "clip_finetune.train.epochs=40"]
    # SIGINT as in a terminal: not ignored (a shell's background jobs inherit it ignored)
    proc = subprocess.Popen(args, cwd=config.PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = tmp_path / "out" / "supplementary" / "smoke" / "results"
    deadline = time.monotonic() + 300
    try:
        while not (results / "06_clip_finetune.jsonl").is_file():  # 06's first record: it is running
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "06 did not start within 300 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert "interrupted during 06_clip_finetune" in err
    # one message from the suite (the kernel it interrupts may print its own KeyboardInterrupt)
    assert 'helpers/suite.py", line' not in err
    kept = [json.loads(line) for line in (results / "06_clip_finetune.jsonl").read_text().splitlines()]
    assert kept and all(r["experiment"] == "06_clip_finetune" for r in kept)  # every line a whole record
    runs = tmp_path / "runs" / "smoke"
    assert not list(runs.glob(".*.running.ipynb"))  # no half-written executed notebook


@pytest.mark.skipif(os.name == "nt", reason="Unix sockets: POSIX only (Windows kernels stay on TCP)")
def test_notebook_kernels_use_unix_sockets_not_loopback_tcp():
    assert suite._kernel_manager()().transport == "ipc"
