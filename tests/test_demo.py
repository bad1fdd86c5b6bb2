"""`make demo` runs `python -m sdvg_core demo --out DIR`: check the three files it writes."""

import json

from PIL import Image

from sdvg_core.__main__ import main
from sdvg_core.stats import COMPONENTS, DECISIONS
from sdvg_core.video import count_frames


def test_demo_writes_video_timeline_and_stats(tmp_path, capsys):
    out = tmp_path / "demo"
    # The CLI's own entry point, in this process; 3 blocks: block 2 is the first with an anchor
    # frame, more blocks add nothing new.
    assert main(["demo", "--out", str(out), "--blocks", "3"]) == 0
    printed = capsys.readouterr().out
    videos = [p for p in out.iterdir() if p.stem == "video"]
    assert len(videos) == 1 and videos[0].suffix in (".mp4", ".webp")
    for name in (videos[0].name, "timeline.png", "stats.json"):
        assert str(out / name) in printed  # it says where they are

    stats = json.loads((out / "stats.json").read_text())
    blocks = stats["blocks"]
    assert len(blocks) == 3 and blocks[0]["decision"] == "target"
    for b in blocks:
        assert b["decision"] in DECISIONS
        assert set(b["model_calls"]) == set(COMPONENTS)
        assert set(COMPONENTS) <= set(b["seconds"]) and "total" in b["seconds"]
        assert isinstance(b["scores"], list)
    assert all(len(b["scores"]) == 12 and b["aggregate"] == min(b["scores"]) for b in blocks[1:]
               if b["decision"] in ("accepted", "rejected"))
    summary = stats["summary"]
    assert {"accept_rate", "model_calls", "seconds", "decisions"} <= set(summary)

    # 9 pixel frames for block 0 and 12 per later block, minus the 3 dropped by default.
    assert count_frames(videos[0]) == 9 + 12 * 2 - 3
    with Image.open(out / "timeline.png") as image:
        image.verify()
    with Image.open(out / "timeline.png") as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 100
