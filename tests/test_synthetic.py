"""The synthetic suite: determinism, file layout, and every answer re-derived from the pixels."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from minivl.data.records import RecordError, parse_record, read_meta, read_records
from minivl.data.synthetic import (
    CELL_NAMES,
    FAULT_RATE,
    PALETTE,
    TASKS,
    generate_suite,
    generate_task,
    sample_rng,
    show_samples,
    synth_command,
)
from minivl.data.synthetic.charts import FORM_FONT, FORM_MID, FORM_ROW, UNIT
from minivl.data.synthetic.common import font
from minivl.data.synthetic.scenes import TRAIN_TURNS

N = 40  # samples per task for the pixel checks


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("suite")
    return out, generate_suite(out, scale="smoke", seed=0)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """N train samples of each image task (no faults mixed in, so every answer is clean)."""
    out = tmp_path_factory.mktemp("big")
    for task in ("caption", "shape_qa", "grounding", "chart", "multi_image", "video", "reasoning", "text_only"):
        generate_task(task, out, "train", N, seed=3, mix_faults=False)
    generate_task("small_text", out, "train", 8, seed=3, mix_faults=False)
    return out


def load(out: Path, task: str, split: str = "train") -> list[dict]:
    lines = (out / "annotations" / split / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def pixels(out: Path, task: str, rel: str, split: str = "train") -> np.ndarray:
    return np.asarray(Image.open(out / "images" / split / task / rel).convert("RGB"))


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------
# scenes read back from pixels, independently of the generator's meta
# ------------------------------------------------------------------------------------------


def read_scene(img: np.ndarray) -> list[dict]:
    """Shapes found in a scene image: per 3x3 cell, the palette colour present, its pixel box and
    its kind from the fill ratio (square 1, circle pi/4, triangle / diamond 1/2: a triangle's
    bottom row is full, a diamond's is one or two pixels)."""
    h, w, _ = img.shape
    found = []
    for cell in range(9):
        row, col = divmod(cell, 3)
        x0, y0 = col * w // 3, row * h // 3
        sub = img[y0:(row + 1) * h // 3, x0:(col + 1) * w // 3]
        hits = [(name, (sub == rgb).all(-1)) for name, rgb in PALETTE.items() if (sub == rgb).all(-1).any()]
        assert len(hits) <= 1, f"two colours in cell {cell}"
        if not hits:
            continue
        colour, mask = hits[0]
        ys, xs = np.nonzero(mask)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        fill = mask.sum() / ((bx1 - bx0) * (by1 - by0))
        bottom = mask[by1 - 1, bx0:bx1].sum() / (bx1 - bx0)
        if fill > 0.95:
            kind = "square"
        elif fill > 0.7:
            kind = "circle"
        else:
            kind = "triangle" if bottom > 0.8 else "diamond"
        found.append({"cell": cell, "position": CELL_NAMES[cell], "colour": colour, "kind": kind,
                      "bbox": [int(bx0 + x0), int(by0 + y0), int(bx1 + x0), int(by1 + y0)]})
    return found


def check_scene(img: np.ndarray, meta: dict) -> list[dict]:
    """The pixel scene equals the meta scene (kind, colour, position, exact bbox)."""
    found = read_scene(img)
    expected = [{k: s[k] for k in ("position", "colour", "kind", "bbox")} for s in meta["shapes"]]
    assert [{k: f[k] for k in ("position", "colour", "kind", "bbox")} for f in found] == expected
    bg = tuple(meta["background"])
    assert tuple(img[0, 0]) == bg or any(s["bbox"][:2] == [0, 0] for s in meta["shapes"])
    return found


def caption_by_hand(shapes: list[dict]) -> str:
    parts = [f"a {s['colour']} {s['kind']} " + ("in the center" if s["position"] == "center" else f"at the {s['position']}")
             for s in shapes]
    n = len(shapes)
    listing = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"There {'is' if n == 1 else 'are'} {n} shape{'' if n == 1 else 's'}: {listing}."


def refer(shapes: list[dict], phrase: str) -> list[dict]:
    """Shapes a phrase like 'the triangle', 'the red circle' or 'the red shapes' refers to."""
    words = phrase.removeprefix("the ").split()
    if words[-1] == "shapes":
        return [s for s in shapes if s["colour"] == words[0]]
    if len(words) == 1:
        return [s for s in shapes if s["kind"] == words[0]]
    return [s for s in shapes if s["colour"] == words[0] and s["kind"] == words[1]]


# ------------------------------------------------------------------------------------------
# determinism and layout
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(suite, tmp_path):
    out, _ = suite
    generate_suite(tmp_path, scale="smoke", seed=0)
    first, second = file_hashes(out), file_hashes(tmp_path)
    assert len(first) > 100
    assert first == second


def test_other_seed_and_other_split_differ(suite, tmp_path):
    out, _ = suite
    generate_suite(tmp_path, scale="smoke", seed=1, splits=("train",), tasks=("caption",))
    a, b = file_hashes(out / "images/train/caption"), file_hashes(tmp_path / "images/train/caption")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)
    train, val = file_hashes(out / "images/train/caption"), file_hashes(out / "images/val/caption")
    assert not set(train.values()) & set(val.values())


def test_sample_rng_depends_on_every_part():
    draws = {sample_rng(*key).random() for key in [(0, "train", "caption", 0), (1, "train", "caption", 0),
                                                   (0, "val", "caption", 0), (0, "train", "chart", 0),
                                                   (0, "train", "caption", 1)]}
    assert len(draws) == 5
    assert sample_rng(0, "train", "caption", 0).random() == sample_rng(0, "train", "caption", 0).random()


def test_smaller_run_is_a_prefix(tmp_path):
    a = generate_task("shape_qa", tmp_path / "a", "train", 3, seed=5, mix_faults=False)
    b = generate_task("shape_qa", tmp_path / "b", "train", 6, seed=5, mix_faults=False)
    assert a == b[:3]


def test_meta_files(suite):
    out, result = suite
    assert set(result["meta"]) == {"train", "val", "test"}
    train = read_meta(out / "train.json")
    assert list(train) == [t for t in TASKS if t != "faulty"]
    assert list(read_meta(out / "train_faulty.json")) == ["faulty"]
    assert train["small_text"].max_dynamic_patch == 16
    assert train["multi_image"].max_dynamic_patch == 8
    assert (train["video"].max_dynamic_patch, train["video"].data_augment) == (1, False)
    assert (train["text_only"].max_dynamic_patch, train["text_only"].data_augment) == (None, False)
    assert train["caption"].data_augment is True
    raw = json.loads((out / "train.json").read_text())
    assert "max_dynamic_patch" not in raw["text_only"]
    assert all(not m.data_augment for m in read_meta(out / "val.json").values())
    for split in ("train", "val", "test"):
        for name, meta in read_meta(out / f"{split}.json").items():
            records, skipped = meta.read_records(strict=True)
            assert meta.length == len(records) == result["counts"][split][name]
            assert not skipped
            for r in records:
                for rel in r.images:
                    assert meta.image_path(rel).is_file()
                if r.kind == "video":
                    assert len(list(meta.image_path(r.video).glob("frame_*.png"))) == r.extra["meta"]["num_frames"]
    # smoke: 4 train samples per task (reasoning: 2 records per sample), 2 for val and test
    assert result["counts"]["train"]["reasoning"] == 8 and result["counts"]["val"]["caption"] == 2


def test_record_kinds(suite):
    out, _ = suite
    metas = read_meta(out / "train.json")
    kinds = {name: {r.kind for r in m.read_records()[0]} for name, m in metas.items()}
    assert kinds["multi_image"] == {"multi_image"} and kinds["video"] == {"video"}
    assert kinds["text_only"] == {"text"} and kinds["caption"] == {"image"}


# ------------------------------------------------------------------------------------------
# answers re-derived from pixels
# ------------------------------------------------------------------------------------------


def test_caption_matches_pixels(big):
    for r in load(big, "caption"):
        shapes = check_scene(pixels(big, "caption", r["image"]), r["meta"])
        assert 1 <= len(shapes) <= 5
        assert r["conversations"][1]["value"] == caption_by_hand(shapes)
        assert (r["width"], r["height"]) == Image.open(big / "images/train/caption" / r["image"]).size


def test_shape_qa_answers_match_pixels(big):
    types, turns = Counter(), Counter()
    for r in load(big, "shape_qa"):
        shapes = check_scene(pixels(big, "shape_qa", r["image"]), r["meta"])
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert len({t["value"].removeprefix("<image>\n") for t in conv[::2]}) == len(conv) // 2  # distinct
        turns[len(conv) // 2] += 1
        for (q, a), t in zip(zip(conv[::2], conv[1::2]), r["meta"]["turns"]):
            q, a = q["value"].removeprefix("<image>\n"), a["value"]
            assert (t["question"], t["answer"]) == (q, a)
            check_shape_answer(shapes, q, a)
        types[r["meta"]["question_type"]] += 1
    assert set(types) == {"count", "colour", "position"}
    assert turns[TRAIN_TURNS] >= 0.8 * sum(turns.values())  # train images carry several questions


def test_held_out_shape_qa_has_one_question(tmp_path):
    for r in generate_task("shape_qa", tmp_path, "test", 6, seed=3):
        assert len(r["conversations"]) == 2 and len(r["meta"]["turns"]) == 1


def check_shape_answer(shapes, q, a):
    """Re-derive the answer to one shape_qa question from the scene read back from pixels."""
    if q == "How many shapes are there?":
        expected = str(len(shapes))
    elif m := re.fullmatch(r"How many (\w+) shapes are there\?", q):
        expected = str(sum(s["colour"] == m[1] for s in shapes))
    elif m := re.fullmatch(r"How many (\w+)s are there\?", q):
        expected = str(sum(s["kind"] == m[1] for s in shapes))
    elif m := re.fullmatch(r"What colour is the (\w+)\?", q):
        (target,) = [s for s in shapes if s["kind"] == m[1]]
        expected = target["colour"]
    else:
        m = re.fullmatch(r"Where is (the [\w ]+)\?", q)
        (target,) = refer(shapes, m[1])
        expected = target["position"]
    assert a == expected, (q, a, expected)


def test_grounding_boxes_match_pixels(big):
    multi = 0
    for r in load(big, "grounding"):
        img = pixels(big, "grounding", r["image"])
        shapes = check_scene(img, r["meta"])
        h, w, _ = img.shape
        human, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        ref = re.search(r"<ref>(.*?)</ref>", human)[1]
        assert human == ("<image>\nPlease provide the bounding box coordinate of the region this sentence "
                         f"describes: <ref>{ref}</ref>")
        m = re.fullmatch(r"<ref>(.*?)</ref><box>\[(.*)\]</box>", answer)
        assert m and m[1] == ref
        boxes = [list(map(int, b.split(", "))) for b in re.findall(r"\[([\d, ]+)\]", m[2])]
        targets = refer(shapes, ref)
        assert len(boxes) == len(targets) >= 1
        multi += len(boxes) > 1
        for box, shape in zip(boxes, targets):
            assert all(0 <= v <= 1000 for v in box) and box[0] < box[2] and box[1] < box[3]
            # back to pixels: within the rounding of 0-1000 (W/2000 or H/2000 px) of the drawn pixels
            back = [box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000]
            assert np.allclose(back, shape["bbox"], rtol=0, atol=max(w, h) / 2000 + 1e-9)
            assert box == [round(shape["bbox"][0] / w * 1000), round(shape["bbox"][1] / h * 1000),
                           round(shape["bbox"][2] / w * 1000), round(shape["bbox"][3] / h * 1000)]
    assert multi >= 1  # the 'the red shapes' variant occurs


def test_chart_values_read_back_from_pixels(big):
    kinds = Counter()
    for r in load(big, "chart"):
        meta = r["meta"]
        img = pixels(big, "chart", r["image"])
        q, a = r["conversations"][0]["value"].removeprefix("<image>\n"), r["conversations"][1]["value"]
        kinds[meta["chart_type"]] += 1
        if meta["chart_type"] == "form":
            m = re.fullmatch(r"What is the (\w+) in the (\w+)\?", q)
            assert m[2] == meta["title"].lower()
            assert a == dict(meta["rows"])[m[1]]
            # the value cell holds exactly the answer's text: render it alone and compare pixels
            x0, y0, x1, y1 = meta["row_boxes"][[k for k, _ in meta["rows"]].index(m[1])]
            cell = Image.new("RGB", (224, 224), (255, 255, 255))
            ImageDraw.Draw(cell).text((FORM_MID + 6, y0 + FORM_ROW // 2), a, font=font(FORM_FONT), fill=(0, 0, 0),
                                      anchor="lm")
            region = (slice(y0 + 1, y1 - 2), slice(FORM_MID + 1, x1 - 2))
            assert (np.asarray(cell)[region] < 128).any()
            assert np.array_equal(img[region], np.asarray(cell)[region])
            continue
        baseline = meta["baseline"]
        if meta["chart_type"] == "bar":
            bar = (img == PALETTE[meta["colour"]]).all(-1)
            cols = np.nonzero(bar[baseline - 1])[0]
            runs = np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)  # one run of columns per bar
            values = [int(bar[:, run[len(run) // 2]].sum()) / UNIT for run in runs]
        else:
            mark = (img == PALETTE[meta["marker_colour"]]).all(-1)
            cols = np.nonzero(mark.any(0))[0]
            runs = np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)
            values = [(baseline - np.nonzero(mark[:, run[len(run) // 2]])[0].mean()) / UNIT for run in runs]
        assert values == meta["values"]
        labels = meta["labels"]
        if m := re.fullmatch(r"What is the value of (\w)\?", q):
            assert a == str(int(values[labels.index(m[1])]))
        else:
            assert q in ("Which bar is the tallest?", "Which point is the highest?")
            assert values.count(max(values)) == 1 and a == labels[values.index(max(values))]
    assert set(kinds) == {"bar", "line", "form"}


def tile_grid(width: int, height: int, max_num: int) -> tuple[int, int]:
    """InternVL's grid choice, written out for this test: closest aspect ratio, ties to a larger
    grid only when the image area exceeds half the grid's area (112 px tiles)."""
    ratios = sorted({(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if i * j <= max_num}, key=lambda r: r[0] * r[1])
    best, best_diff = (1, 1), float("inf")
    for i, j in ratios:
        diff = abs(width / height - i / j)
        if diff < best_diff or (diff == best_diff and width * height > 0.5 * 112 * 112 * i * j):
            best, best_diff = (i, j), diff
    return best


def ink_rows(gray: np.ndarray, bg: float, ink: float) -> int:
    """Rows holding a pixel at least half-way from the background to the ink."""
    return int((gray < (bg + ink) / 2).any(1).sum())


def test_small_text_needs_tiling(big):
    for r in load(big, "small_text"):
        meta = r["meta"]
        image = Image.open(big / "images/train/small_text" / r["image"]).convert("L")
        bg, ink = meta["background"][0], meta["ink"][0]
        assert r["conversations"][1]["value"] == meta["text"]
        # native resolution: the glyphs are 7 px tall
        native = ink_rows(np.asarray(image, dtype=float), bg, ink)
        assert native >= 6
        # one 112 px tile: under 2 px tall, and no pixel keeps half the contrast
        scale = 112 / max(image.size)
        assert native * scale < 2
        assert ink_rows(np.asarray(image.resize((112, 112), Image.BICUBIC), dtype=float), bg, ink) == 0
        # dynamic tiling with 112 px tiles and max_dynamic_patch 16: a 4x4 grid at full size
        cols, rows = tile_grid(*image.size, max_num=16)
        assert (cols, rows) == (4, 4)
        tiled = image.resize((112 * cols, 112 * rows), Image.BICUBIC)
        assert ink_rows(np.asarray(tiled, dtype=float), bg, ink) >= 6


def test_multi_image_answers_match_pixels(big):
    for r in load(big, "multi_image"):
        n = len(r["image"])
        assert 2 <= n <= 4 and r["width_list"] == [112] * n and r["height_list"] == [112] * n
        human = r["conversations"][0]["value"]
        prefix = "".join(f"Image-{k + 1}: <image>\n" for k in range(n))
        assert human.startswith(prefix)
        scenes = [check_scene(pixels(big, "multi_image", p), m) for p, m in zip(r["image"], r["meta"]["images"])]
        q, a = human[len(prefix):], r["conversations"][1]["value"]
        if q == "Which image has the most shapes?":
            counts = [len(s) for s in scenes]
            assert counts.count(max(counts)) == 1 and a == f"Image-{counts.index(max(counts)) + 1}"
        elif m := re.fullmatch(r"Which image contains a (\w+) (\w+)\?", q):
            has = [any(s["colour"] == m[1] and s["kind"] == m[2] for s in sc) for sc in scenes]
            assert sum(has) == 1 and a == f"Image-{has.index(True) + 1}"
        else:
            assert q == "How many shapes are there in all the images together?"
            assert a == str(sum(map(len, scenes)))


def test_video_answers_match_frames(big):
    types = Counter()
    for r in load(big, "video"):
        meta = r["meta"]
        frames = sorted((big / "images/train/video" / r["video"]).glob("frame_*.png"))
        assert len(frames) == meta["num_frames"] in (4, 6, 8)
        centres = []
        for f in frames:
            mask = (np.asarray(Image.open(f).convert("RGB")) == PALETTE[meta["colour"]]).all(-1)
            ys, xs = np.nonzero(mask)
            centres.append((xs.mean(), ys.mean()) if len(xs) else None)
        seen = [c for c in centres if c is not None]
        dx, dy = seen[-1][0] - seen[0][0], seen[-1][1] - seen[0][1]
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        steps = [b[0] - a[0] if direction in ("left", "right") else b[1] - a[1] for a, b in zip(seen, seen[1:])]
        assert all(s > 0 for s in steps) or all(s < 0 for s in steps)  # monotone motion
        hidden = [c is None for c in centres]
        disappearances = sum(1 for t in range(1, len(hidden)) if hidden[t] and not hidden[t - 1])
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        assert q.startswith("<video>\n")
        if "direction" in q:
            assert a == direction and not any(hidden)
        else:
            assert a == str(disappearances) and 1 <= disappearances <= 3
        types[meta["question_type"]] += 1
    assert set(types) == {"direction", "blink"}


def test_reasoning_options_and_rationale(big):
    records = load(big, "reasoning")
    assert len(records) == 2 * N
    for cot, direct in zip(records[::2], records[1::2]):
        assert cot["id"].endswith("-cot") and direct["id"].endswith("-direct")
        assert cot["image"] == direct["image"] and cot["meta"]["instance"] == direct["meta"]["instance"]
        shapes = check_scene(pixels(big, "reasoning", cot["image"]), cot["meta"])
        q = cot["conversations"][0]["value"].split("\n")
        assert q[1:5] == direct["conversations"][0]["value"].split("\n")[1:5]
        options = [line[3:] for line in q[2:6]]
        assert [line[:3] for line in q[2:6]] == ["A. ", "B. ", "C. ", "D. "] and len(set(options)) == 4
        kinds, colours = Counter(s["kind"] for s in shapes), Counter(s["colour"] for s in shapes)
        if m := re.fullmatch(r"Add the number of (\w+)s to the number of (\w+)s\. What is the result\?", q[1]):
            value = kinds[m[1]] + kinds[m[2]]
        elif m := re.fullmatch(r"If every (\w+) shape is removed, how many shapes are left\?", q[1]):
            value = len(shapes) - colours[m[1]]
        else:
            m = re.fullmatch(r"Multiply the number of (\w+) shapes by 2, then add the number of (\w+)s\. "
                             r"What is the result\?", q[1])
            value = 2 * colours[m[1]] + kinds[m[2]]
        letter = "ABCD"[options.index(str(value))]
        assert cot["meta"]["answer_letter"] == letter and cot["meta"]["options"] == options
        assert direct["conversations"][1]["value"] == letter
        rationale = cot["conversations"][1]["value"]
        assert rationale.endswith(f"Answer: \\boxed{{{letter}}}") and f"= {value}." in rationale


def test_text_only_answers(big):
    for r in load(big, "text_only"):
        conv = r["conversations"]
        assert "image" not in r and conv[0]["from"] in ("human", "system")
        q, a = conv[-2]["value"], conv[-1]["value"]
        if m := re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", q):
            assert int(a) == (int(m[1]) + int(m[3]) if m[2] == "+" else int(m[1]) - int(m[3])) >= 0
        elif q.startswith("Repeat exactly: "):
            assert a == q.removeprefix("Repeat exactly: ")
        elif q.startswith("Sort these words alphabetically: "):
            assert a.split(", ") == sorted(q.split(": ")[1].split(", "))
        else:
            passage, question = q.split("\n")
            if m := re.fullmatch(r"What colour is (\w+)'s (\w+)\?", question):
                assert f"{m[1]} has a {a} {m[2]}." in passage
            else:
                m = re.fullmatch(r"How many (\w+)s does (\w+) have\?", question)
                assert f"{m[2]} has {a} {m[1]}s." in passage


# ------------------------------------------------------------------------------------------
# faults
# ------------------------------------------------------------------------------------------


def ngram_repetition(text: str, n: int = 10) -> float:
    """InternVL's repetition ratio: distinct n-grams seen more than once / all n-grams."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return sum(c > 1 for c in Counter(grams).values()) / len(grams) if grams else 0.0


def duplicate_fraction(text: str, n: int = 10) -> float:
    """Share of n-gram occurrences that repeat an earlier one."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def test_faulty_task_is_labelled_and_detectable(tmp_path):
    records = generate_task("faulty", tmp_path, "test", 120, seed=0)
    faults = Counter(r.get("fault") for r in records)
    assert set(faults) == {None, "repetition", "truncated", "garbage", "empty", "placeholder"}
    assert 40 <= faults[None] <= 80
    for r in records:
        answer = r["conversations"][-1]["value"]
        fault = r.get("fault")
        if fault == "placeholder":
            with pytest.raises(RecordError) as err:
                parse_record(r)
            assert err.value.reason == "placeholder_count"
            continue
        parse_record(r)  # every other record is structurally valid
        if fault == "repetition":
            # a 10-word loop repeated k times: 10 distinct repeated 10-grams among 10k - 9
            k = len(answer.split()) // 10
            assert 3 <= k <= 6 and len(answer.split()) == 10 * k
            assert ngram_repetition(answer) == pytest.approx(10 / (10 * k - 9))
            assert duplicate_fraction(answer) == pytest.approx(1 - 10 / (10 * k - 9)) and duplicate_fraction(answer) > 0.4
        elif fault is None:
            assert ngram_repetition(answer) <= 0.4 and answer
        elif fault == "empty":
            assert answer == ""
        elif fault == "truncated":
            assert answer and answer[-1] != " " and answer not in (r["meta"].get("answer"),)
    # the lenient reader skips exactly the placeholder faults
    kept, skipped = read_records(tmp_path / "annotations/test/faulty.jsonl", strict=False)
    assert skipped == Counter(placeholder_count=faults["placeholder"]) and len(kept) == 120 - faults["placeholder"]


def test_faults_mixed_into_train_only(tmp_path):
    n = 300
    train = generate_task("text_only", tmp_path, "train", n, seed=0)
    expected = [i for i in range(n) if sample_rng(0, "train", "text_only/fault", i).random() < FAULT_RATE]
    assert [i for i, r in enumerate(train) if r.get("fault")] == expected
    assert 1 <= len(expected) <= 20
    assert all(r["fault"] in ("repetition", "truncated", "garbage", "empty") for r in train if r.get("fault"))
    val = generate_task("text_only", tmp_path, "val", n, seed=0)
    assert not any("fault" in r for r in val)


# ------------------------------------------------------------------------------------------
# browsing and the command
# ------------------------------------------------------------------------------------------


def test_show_samples_axes(suite):
    import matplotlib.pyplot as plt

    out, _ = suite
    for task, n, expected in (("caption", 3, 3), ("video", 2, 2), ("text_only", 10, 4), ("multi_image", 4, 4)):
        fig = show_samples(out, task, n=n, cols=3)
        assert len(fig.axes) == expected
        assert fig.axes[0].get_title(loc="left").startswith("Q: ")
        plt.close(fig)
    fig = show_samples(out, "faulty", split="test", n=2)
    assert 1 <= len(fig.axes) <= 2
    plt.close(fig)
    with pytest.raises(KeyError, match="no task 'nope'"):
        show_samples(out, "nope")


def test_synth_command_prints_table(tmp_path, capsys):
    result = synth_command(tmp_path, "smoke", seed=2)
    text = capsys.readouterr().out
    total = sum(sum(c.values()) for c in result["counts"].values())
    assert re.search(r"^caption\s+4\s+2\s+2\s", text, re.M)
    assert re.search(r"^total\s+\d+\s+\d+\s+\d+\s", text, re.M)
    assert total == sum(int(x) for x in re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M).groups())
    assert (tmp_path / "train.json").is_file()


# ------------------------------------------------------------------------------------------
# the committed example under data/example matches what the generator writes
# ------------------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example"


def test_example_files_match_generator(suite, big, tmp_path):
    out, _ = suite
    generated_meta = json.loads((out / "train.json").read_text())
    example_meta = json.loads((EXAMPLE / "train.json").read_text())
    for name, entry in example_meta.items():
        assert list(entry) == list(generated_meta[name])
        for key in ("root", "annotation", "data_augment", "repeat_time"):
            assert entry[key] == generated_meta[name][key]
        assert entry.get("max_dynamic_patch") == generated_meta[name].get("max_dynamic_patch")
    faulty_out = tmp_path / "f"
    generate_task("faulty", faulty_out, "train", 40, seed=0)
    sources = {name: load(big, name) for name in example_meta} | {"faulty": load(faulty_out, "faulty")}
    for meta_file in ("train.json", "train_faulty.json"):
        for name, meta in read_meta(EXAMPLE / meta_file).items():
            records, skipped = meta.read_records(strict=False)
            assert meta.length == len(records) + sum(skipped.values())
            assert skipped == (Counter(placeholder_count=1) if name == "faulty" else Counter())
            generated = sources[name]
            top_keys = {frozenset(r) - {"fault"} for r in generated}
            meta_keys = set().union(*(r["meta"] for r in generated))
            for line in (EXAMPLE / meta.annotation).read_text().splitlines():
                obj = json.loads(line)
                assert frozenset(obj) - {"fault"} in top_keys, (name, sorted(obj))
                assert set(obj["meta"]) <= meta_keys, (name, set(obj["meta"]) - meta_keys)
    (grounding,) = load(EXAMPLE, "grounding")
    shape = grounding["meta"]["shapes"][grounding["meta"]["targets"][0]]
    assert grounding["meta"]["boxes"] == [[round(v / 112 * 1000) for v in shape["bbox"]]]
    assert grounding["conversations"][1]["value"] == "<ref>the blue circle</ref><box>[[411, 402, 580, 571]]</box>"


def test_shape_question_draws_the_type_first():
    from minivl.data.synthetic.common import random_scene
    from minivl.data.synthetic.scenes import shape_question

    rng, types, counts = random.Random(0), Counter(), Counter()
    n = 1500
    for _ in range(n):
        qtype, question, _ = shape_question(rng, random_scene(rng, 112, 112, rng.randint(1, 5)))
        types[qtype] += 1
        if qtype == "count":
            counts["all" if question == "How many shapes are there?" else "colour" if " shapes " in question
                   else "kind"] += 1
    # a third each (colour and position are allowed by almost every scene; count always is),
    # not the 3 / 1 / 1 fifths of drawing among the five variants at once
    assert all(0.28 < types[t] / n < 0.40 for t in ("count", "colour", "position")), types
    assert all(0.25 < counts[v] / types["count"] < 0.42 for v in ("all", "colour", "kind")), counts
