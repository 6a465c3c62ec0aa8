"""scripts/text_reading_probe.py: its labels lie where the ink is, and its metrics score a
perfect reader 100 % and a reader blind to the image near nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("text_reading_probe", ROOT / "scripts" / "text_reading_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("font_size", [9, 20])
def test_each_labelled_token_holds_ink_and_most_unlabelled_ones_do_not(probe, font_size):
    pixels, labels = probe.render_text_tiles(64, image_size=112, font_size=font_size, seed=3)
    assert pixels.shape == (64, 3, 112, 112) and labels.shape == (64, 16, len(probe.ALPHABET))
    assert labels.sum() > 32  # 0-3 strings of 1-5 characters per tile
    # back to 0-255 grey levels: a token's darkest pixel is ink (<= 60) or background (>= 235),
    # or between them on a glyph's anti-aliased edge
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    grey = ((pixels * std + mean) * 255).mean(1)
    darkest = grey.unfold(1, 28, 28).unfold(2, 28, 28).amin((-1, -2)).flatten(1)  # (n, 16), row-major tokens
    labelled = labels.sum(-1) > 0
    assert (darkest[labelled] < 150).all()  # a character's centre lies in the token: so does some of its ink
    # ink without a label only where a neighbour's character spills over
    assert (darkest[~labelled] < 150).float().mean() < 0.2


def test_tiles_without_text_have_no_labels_and_the_draw_is_seeded(probe):
    a_pixels, a_labels = probe.render_text_tiles(32, image_size=112, font_size=9, seed=0)
    b_pixels, b_labels = probe.render_text_tiles(32, image_size=112, font_size=9, seed=0)
    assert torch.equal(a_pixels, b_pixels) and torch.equal(a_labels, b_labels)
    blank = a_pixels.flatten(2).std(2).amax(1) < 1e-6  # a uniform tile: no string was drawn in it
    assert blank.any() and (a_labels[blank] == 0).all()


class _Passthrough(nn.Module):
    def forward(self, x):
        return x


def test_metrics_score_a_perfect_reader_fully_and_a_blind_one_not_at_all(probe):
    _, labels = probe.render_text_tiles(32, image_size=112, font_size=9, seed=1)
    perfect = probe.reading_metrics(_Passthrough(), _Passthrough(), labels * 20 - 10, labels)
    chance = perfect.pop("top_m_chance")
    assert perfect == {"recall": 1.0, "precision": 1.0, "top_m": 1.0, "token_exact": 1.0}
    m = labels.sum(-1)  # characters per token: a random ranking finds one of m among m of 34
    assert chance == pytest.approx(((m / 34) * m).sum().item() / m.sum().item()) and 0.03 < chance < 0.2
    # a reader that always names the same two characters, whatever it sees
    blind_logits = torch.full_like(labels, -10.0)
    blind_logits[..., :2] = 10.0
    blind = probe.reading_metrics(_Passthrough(), _Passthrough(), blind_logits, labels)
    present = labels.bool()
    expected = present[..., :2].sum().item() / present.sum().item()
    assert blind["recall"] == pytest.approx(expected) and blind["recall"] < 0.2
    assert blind["token_exact"] < 0.1


def test_word_tiles_print_the_labelled_answer_and_a_canvas_shrinks_it(probe):
    from minivl.data.synthetic.small_text import WORDS

    assert len(probe.ANSWERS) == len(WORDS) + 90 and probe.ANSWERS[-1] == "99"
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def ink_pixels(pixels):  # per tile, the pixels darker than mid-grey
        return (((pixels * std + mean) * 255).mean(1) < 150).flatten(1).sum(1).float()

    tile, labels = probe.render_word_tiles(48, image_size=112, font_size=20, seed=0)
    again, same = probe.render_word_tiles(48, image_size=112, font_size=20, seed=0)
    assert torch.equal(tile, again) and torch.equal(labels, same) and tile.shape == (48, 3, 112, 112)
    assert labels.min() >= 0 and labels.max() < len(probe.ANSWERS) and len(set(labels.tolist())) > 20
    assert (ink_pixels(tile) > 20).all()  # every tile shows its answer
    # the same answers printed on small_text's 448 px canvas and squeezed into one tile: a 4x
    # downscale leaves about a sixteenth of the ink, and little of it dark
    thumb, _ = probe.render_word_tiles(48, image_size=112, font_size=20, seed=0, canvas=448)
    assert ink_pixels(thumb).mean() < ink_pixels(tile).mean() / 4
    with pytest.raises(ValueError, match="does not fit"):
        probe.render_word_tiles(2, image_size=112, font_size=90, seed=0)
    # the head takes the strongest patch token: a logit per answer
    head = probe.WordHead(8)
    hidden = torch.zeros(2, 1 + 64, 8)
    assert head(hidden).shape == (2, len(probe.ANSWERS))


def test_word_accuracy_scores_a_perfect_reader_fully_and_a_constant_one_by_its_share(probe):
    labels = torch.tensor([0, 3, 3, 7])

    class Head(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, hidden):
            return self.logits[: len(hidden)]

    perfect = torch.nn.functional.one_hot(labels, len(probe.ANSWERS)).float()
    pixels = torch.zeros(4, 3, 4, 4)
    assert probe.word_accuracy(_Passthrough(), Head(perfect), pixels, labels) == 1.0
    always_three = torch.nn.functional.one_hot(torch.full((4,), 3), len(probe.ANSWERS)).float()
    assert probe.word_accuracy(_Passthrough(), Head(always_three), pixels, labels) == 0.5
