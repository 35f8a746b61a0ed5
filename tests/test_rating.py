"""The blinded rating (helpers.rating): every picture asked once in a shuffled order, nothing labelled until the
last answer, then the arms compared seed by seed as the series' other findings are; bad input refused first."""

import pytest
from PIL import Image

from helpers.rating import BlindRating


def arms(count=6):
    red = [Image.new("RGB", (8, 8), (255, 0, 0)) for _ in range(count)]
    blue = [Image.new("RGB", (8, 8), (0, 0, 255)) for _ in range(count)]
    return red, blue


def test_each_picture_is_asked_once_shuffled_and_the_finding_waits_for_the_last_answer():
    red, blue = arms()
    rating = BlindRating(red, blue, "Is it red?", names=("red", "blue"), seed=3)
    asked = []
    while not rating.done:
        arm, index = rating.current()
        asked.append((arm, index))
        if len(asked) < 12:
            assert rating.finding().startswith(f"Not yet rated: {len(asked) - 1} of 12")
        rating.answer(arm == "red")  # an eye that sees the colour
    assert sorted(asked) == sorted((arm, index) for arm in ("red", "blue") for index in range(6))
    assert [arm for arm, _ in asked] != ["red"] * 6 + ["blue"] * 6  # shuffled across the arms
    assert rating.counts() == {"red": [1] * 6, "blue": [0] * 6}
    change = rating.change()
    assert (change.lower, change.higher, round(change.p, 4)) == (6, 0, 0.0312)
    assert "Yes for 6 of 6 pictures red, 0 of 6 blue" in rating.finding() and "p = 0.031" in rating.finding()
    with pytest.raises(ValueError, match="every picture is answered already"):
        rating.answer(True)


def test_the_order_is_fixed_by_the_seed_and_back_takes_the_last_answer_away():
    red, blue = arms(4)
    assert BlindRating(red, blue, "Red?", seed=1).order == BlindRating(red, blue, "Red?", seed=1).order
    rating = BlindRating(red, blue, "Red?", seed=1)
    first = rating.current()
    rating.answer(True)
    rating.undo()
    assert rating.current() == first and rating.answers == {}


def test_the_widget_shows_one_unlabelled_picture_then_the_unblinded_table():
    red, blue = arms(2)
    rating = BlindRating(red, blue, "Is it red?", names=("red", "blue"))
    widget = rating._build()
    assert bytes(rating._image.value).startswith(b"\x89PNG") and "Picture 1 of 4" in rating._status.value
    assert "red" not in rating._status.value.replace("Is it red?", "")  # no arm named before the end
    for _ in range(4):
        (rating._yes if rating.current()[0] == "red" else rating._no).click()
    assert rating._yes.disabled and "Unblinded" in rating._status.value
    assert "<th>red</th><th>blue</th>" in rating._result.value and "Found, blue against red" in rating._result.value
    assert widget.children[-1] is rating._result


@pytest.mark.parametrize(("arguments", "message"), [
    (([], [Image.new("RGB", (4, 4))], "Q?"), "first"),
    (([Image.new("RGB", (4, 4))], [Image.new("RGB", (4, 4))] * 2, "Q?"), "give one pair per seed"),
    ((["a.png"], [Image.new("RGB", (4, 4))], "Q?"), r"first\[0\]='a.png' is not a PIL image"),
    (([Image.new("RGB", (4, 4))], [Image.new("RGB", (4, 4))], ""), "question"),
])
def test_bad_input_is_refused_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        BlindRating(*arguments)
    with pytest.raises(ValueError, match="names=.*two arms need different labels"):
        BlindRating(*arms(1), "Q?", names=("a", "a"))
