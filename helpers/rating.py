"""Your own eye as the judge, blinded: the pictures of two arms of an experiment (made with and without a change,
the same seeds), shown one at a time, shuffled and unlabelled, each with the experiment's question; when every one
is answered, the arms are unblinded and compared seed by seed with the sign test, as the series' other findings.

Used in notebooks 04 to 07, where no program can read SD3.5's pictures for the question asked ("is there a
birthday cake?"). It works on any model, offline too: on the toy you can rate its pictures and compare your
answers with the toy's judge.

    rating = BlindRating(without, with_negative, "Is there a birthday cake?", names=("no negative", "negative"))
    rating                    # a widget: Yes / No for each picture, in a shuffled order
    print(rating.finding())   # after the last answer: how the arms differ, seed by seed
"""

from __future__ import annotations

import html
import io
import random
from typing import Any

from PIL import Image

from helpers.checks import checked, listed, shown, text, whole
from helpers.experiments import PairedChange, paired_change
from helpers.images import enlarged

MAX_RATED = 200
"""Pictures per arm: a rating session a person can finish."""


def _pictures(value: Any, name: str) -> list[Image.Image]:
    items = listed(lambda item, _: item, 1, MAX_RATED)(value, name)
    for index, item in enumerate(items):
        if not isinstance(item, Image.Image):
            raise ValueError(f"{name}[{index}]={shown(item)} is not a PIL image: give the pictures of one arm, one "
                             "per seed, e.g. sweep.images(negative_prompt='').")
    return list(items)


def _question(value: Any, name: str) -> str:
    if not (isinstance(value, str) and value.strip()):
        raise ValueError(f"{name}={shown(value)} must be the question you answer for each picture, e.g. 'Is there a "
                         "birthday cake?'.")
    return text(value, name)


def _names(value: Any, name: str) -> tuple[str, str]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(item, str) and item.strip()
                                                                          for item in value)):
        raise ValueError(f"{name}={shown(value)} must be two short labels, one per arm, e.g. ('without', 'with').")
    if value[0] == value[1]:
        raise ValueError(f"{name}={shown(value)}: the two arms need different labels.")
    return value[0], value[1]


class BlindRating:
    """Rate the pictures of two arms, paired by seed (`first[i]` and `second[i]` share a seed), shuffled and
    unlabelled, answering `question` Yes or No for each. `seed` fixes the shuffled order."""

    @checked(first=_pictures, second=_pictures, question=_question, names=_names, seed=whole(0, 2**32 - 1))
    def __init__(self, first, second, question: str, *, names: tuple[str, str] = ("first", "second"),
                 seed: int = 0):
        if len(first) != len(second):
            raise ValueError(f"first has {len(first)} pictures and second {len(second)}: give one pair per seed, the "
                             "same seeds in the same order.")
        self.arms = {names[0]: first, names[1]: second}
        self.question = question
        self.order = [(arm, index) for arm in self.arms for index in range(len(first))]
        random.Random(seed).shuffle(self.order)
        self.answers: dict[tuple[str, int], bool] = {}
        self._widget = None

    @property
    def done(self) -> bool:
        return len(self.answers) == len(self.order)

    def current(self) -> tuple[str, int] | None:
        """The (arm, seed index) being asked now; None when every picture is answered."""
        return None if self.done else self.order[len(self.answers)]

    def answer(self, yes: bool) -> None:
        """Answer the picture shown now (the Yes and No buttons call this)."""
        if not isinstance(yes, bool):
            raise ValueError(f"yes={shown(yes)} must be True or False.")
        if self.done:
            raise ValueError("every picture is answered already: read rating.finding(), or make a new BlindRating.")
        self.answers[self.current()] = yes
        self._show()

    def undo(self) -> None:
        """Take the last answer back (the Back button)."""
        if self.answers:
            del self.answers[self.order[len(self.answers) - 1]]
        self._show()

    def counts(self) -> dict[str, list[int]]:
        """Per arm, 1 where the answer was Yes, seed by seed (only once every picture is answered)."""
        if not self.done:
            raise ValueError(f"{len(self.answers)} of {len(self.order)} pictures are answered: answer the rest first.")
        return {arm: [int(self.answers[arm, index]) for index in range(len(pictures))]
                for arm, pictures in self.arms.items()}

    def change(self) -> PairedChange:
        """How the Yes answers changed from the first arm to the second, seed by seed."""
        first, second = self.counts().values()
        return paired_change(first, second)

    def finding(self) -> str:
        """The finding once every picture is answered, else how many are left."""
        if not self.done:
            return (f"Not yet rated: {len(self.answers)} of {len(self.order)} pictures answered. Answer the rest "
                    "above, then run this cell again.")
        (first, yes_first), (second, yes_second) = ((arm, sum(values)) for arm, values in self.counts().items())
        pairs = len(self.arms[first])
        return (f"Your answers to {self.question!r}: Yes for {yes_first} of {pairs} pictures {first}, {yes_second} of "
                f"{pairs} {second}. Found, {second} against {first}: {self.change().finding('the Yes answers')}")

    # --- the widget ------------------------------------------------------------------------------------------

    def _build(self):
        import ipywidgets as widgets

        self._status = widgets.HTML()
        self._image = widgets.Image(format="png", layout=widgets.Layout(width="384px"))
        self._yes = widgets.Button(description="Yes", button_style="success")
        self._no = widgets.Button(description="No", button_style="danger")
        self._back = widgets.Button(description="Back")
        self._result = widgets.HTML()
        self._yes.on_click(lambda _: self.answer(True))
        self._no.on_click(lambda _: self.answer(False))
        self._back.on_click(lambda _: self.undo())
        self._widget = widgets.VBox([self._status, self._image, widgets.HBox([self._yes, self._no, self._back]),
                                     self._result])
        self._show()
        return self._widget

    def _show(self) -> None:
        if self._widget is None:
            return
        shown_now = self.current()
        self._yes.disabled = self._no.disabled = shown_now is None
        self._back.disabled = not self.answers
        if shown_now is None:
            self._status.value = f"<b>All {len(self.order)} pictures answered.</b> Unblinded:"
            self._image.value = b""
            rows = "".join(f"<tr><td>{index}</td>" + "".join(
                f"<td>{'Yes' if self.answers[arm, index] else 'No'}</td>" for arm in self.arms) + "</tr>"
                for index in range(len(next(iter(self.arms.values())))))
            header = "".join(f"<th>{html.escape(arm)}</th>" for arm in self.arms)
            self._result.value = (f"<table><tr><th>seed #</th>{header}</tr>{rows}</table>"
                                  f"<p>{html.escape(self.finding())}</p>")
            return
        arm, index = shown_now
        buffer = io.BytesIO()
        enlarged(self.arms[arm][index], 384).save(buffer, format="PNG")
        self._image.value = buffer.getvalue()
        self._status.value = (f"<b>{html.escape(self.question)}</b> Picture {len(self.answers) + 1} of "
                              f"{len(self.order)} (shuffled; which arm it is comes after the last answer).")
        self._result.value = ""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._widget or self._build())
