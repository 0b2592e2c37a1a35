import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from hydra_umm.eval.report import ReportContent, read_scalars, report_run, write_report

CHROMIUM = "/usr/bin/chromium"


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.stack, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        elif tag not in {"meta", "br", "hr", "link", "input"}:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def check_page(index: Path) -> list[str]:
    """Parse the page: balanced tags, every <img src> relative and existing; returns the srcs."""
    text = index.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    for src in parser.srcs:
        assert not Path(src).is_absolute() and (index.parent / src).is_file(), src
    return parser.srcs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with TensorBoard scalars in a sub-folder and an eval metrics file."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path_factory.mktemp("run")
    writer = SummaryWriter(str(run / "tb"))
    for step in range(5):
        writer.add_scalar("loss/flow", 1.0 / (step + 1), step)
        writer.add_scalar("lr", 1e-3, step)
    writer.close()
    (run / "eval").mkdir()
    (run / "eval" / "recon.json").write_text(json.dumps({"psnr": 21.5, "ssim": 0.61, "note": "text is skipped"}))
    return run


def test_tensorboard_scalars_are_read(run_dir):
    curves = read_scalars(run_dir)
    assert sorted(curves) == ["tb/loss/flow", "tb/lr"]
    assert [s for s, _ in curves["tb/loss/flow"]] == [0, 1, 2, 3, 4]
    assert curves["tb/loss/flow"][1][1] == pytest.approx(0.5)


def test_jsonl_log_is_read_when_there_are_no_event_files(tmp_path):
    lines = [{"step": 0, "loss": 2.0, "stage": "I"}, {"step": 10, "loss": 1.0, "lr": 0.1}, {"note": "no step"}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_scalars(tmp_path) == {"loss": [(0, 2.0), (10, 1.0)], "lr": [(10, 0.1)]}


@pytest.fixture(scope="module")
def page(run_dir, shapes_like_images, make_fake_pipeline):
    images = [Image.open(p).convert("RGB") for p in shapes_like_images[:3]]
    prompts = [{"prompt": "a red circle", "tag": "colors"}, {"prompt": "two squares", "tag": "counting"}]
    qa = [{"image": str(shapes_like_images[0]), "caption": "c",
           "qa": [{"question": "What colour is it?", "answer": "red", "type": "color"}]}]
    pipeline = make_fake_pipeline(replies={"What colour is it?": "red"})
    return report_run(run_dir, pipeline, images=images, prompts=prompts, qa_records=qa, n_samples=2,
                      scorer=lambda image, meta: 1.0 if meta["tag"] == "colors" else 0.0)


def test_report_page_is_valid_and_its_images_exist(page, run_dir):
    assert page == run_dir / "report" / "index.html"
    srcs = check_page(page)
    assert "assets/reconstructions.png" in srcs and "assets/curves.png" in srcs
    assert sum(s.startswith("assets/gen_") for s in srcs) == 4 and sum(s.startswith("assets/qa_") for s in srcs) == 1
    text = page.read_text()
    for needle in ("colors", "counting", "What colour is it?", "recon", "21.5", "understanding of the 1 images shown"):
        assert needle in text
    grid = Image.open(page.parent / "assets" / "reconstructions.png")
    assert grid.size == (2 * 32 + 4, 3 * 32 + 2 * 4)  # three rows of input | reconstruction


def test_empty_report_is_still_valid(tmp_path):
    check_page(write_report(ReportContent(title="empty <run>"), tmp_path))


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed: headless rendering not checked")
def test_report_renders_in_headless_chromium(page, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,2000", page.resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    image = Image.open(shot).convert("L")
    assert image.getextrema()[0] < 128  # something dark (text, images) was drawn on the white page
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
