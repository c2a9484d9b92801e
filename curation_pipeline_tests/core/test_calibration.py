"""Threshold calibration from synthetic edits (core.calibration): the edits, and the picks."""

import random

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from curation_pipeline.core.calibration import EDIT_FAMILIES, pick_thresholds, synthetic_edit


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(data.coffee()).resize((300, 200))


@pytest.mark.parametrize("kind", EDIT_FAMILIES + ("chain2",))
def test_every_edit_family_makes_a_changed_copy(photo, kind):
    edited, label = synthetic_edit(photo, random.Random(1), kind)
    assert edited.mode == "RGB" and label
    if kind == "crop":
        kept = edited.width * edited.height / (photo.width * photo.height)
        assert 0.70 <= kept <= 0.95
    if kind == "flip":
        assert np.array_equal(np.asarray(edited), np.asarray(ImageOps.mirror(photo)))
    if kind == "chain2":
        assert " + " in label
    if kind != "png":  # a PNG re-encode of decoded pixels is lossless
        same = edited.size == photo.size and np.array_equal(np.asarray(edited), np.asarray(photo))
        assert not same


def test_edits_are_seeded(photo):
    a = [synthetic_edit(photo, random.Random(7))[1] for _ in range(3)]
    b = [synthetic_edit(photo, random.Random(7))[1] for _ in range(3)]
    assert a == b


def test_unknown_edit_is_a_clear_error(photo):
    with pytest.raises(ValueError, match="unknown edit family 'sepia'"):
        synthetic_edit(photo, random.Random(0), "sepia")


def test_proposal_cosine_keeps_the_target_recall_and_no_more():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0.80, 1.0, 400)
    neg = rng.uniform(0.30, 0.85, 400)
    pick = pick_thresholds(pos, neg, np.full(400, 0.95), np.full(400, np.nan), default_share=0.75, target_recall=0.97)
    assert (pos >= pick.proposal_min_cosine).mean() >= 0.97
    assert (pos >= pick.proposal_min_cosine + 0.01).mean() < 0.97  # the highest such threshold
    assert pick.proposal_recall >= 0.97 and 0 < pick.negatives_proposed < 0.2


def test_verifier_acceptance_is_tightened_by_look_alike_neighbours_never_loosened():
    pos_share = np.r_[np.full(95, 0.97), np.full(5, 0.80)]
    easy = pick_thresholds(np.ones(100), np.zeros(100), pos_share, np.full(100, 0.3), default_share=0.75)
    assert easy.min_share == 0.75 and easy.verifier_precision == 1.0  # not loosened below the default
    hard_neighbours = np.r_[np.full(90, 0.3), np.full(10, 0.85)]  # 10 neighbours agree on 85% of pixels
    hard = pick_thresholds(np.ones(100), np.zeros(100), pos_share, hard_neighbours, default_share=0.75)
    assert hard.min_share > 0.85 and hard.verifier_precision >= 0.99 and hard.precision_target_met
    assert 0.9 <= hard.verifier_recall <= 0.95


def test_an_unreachable_precision_keeps_the_default_instead_of_discarding_true_copies():
    # 4 neighbours agree as well as most edits do (unmerged real duplicates, perhaps): only a share
    # of 0.99 would exclude them, and it would keep a tenth of the edits
    pos_share = np.r_[np.full(10, 0.995), np.linspace(0.76, 0.98, 90)]
    neg_share = np.r_[np.full(4, 0.97), np.full(196, np.nan)]
    pick = pick_thresholds(np.ones(100), np.zeros(200), pos_share, neg_share, default_share=0.75)
    assert pick.min_share == 0.75 and not pick.precision_target_met
    assert pick.verifier_recall == 1.0


def test_pairs_other_tests_decide_count_at_every_threshold():
    # inf: accepted whatever the share threshold (photometric path); NaN: rejected whatever it
    pos = np.r_[np.full(50, np.inf), np.full(50, np.nan)]
    pick = pick_thresholds(np.ones(100), np.zeros(10), pos, np.full(10, np.nan), default_share=0.75)
    assert all(r["recall"] == 0.5 and r["false_accepts"] == 0 for r in pick.share_curve)
