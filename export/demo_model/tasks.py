"""Robot-assistant conversations for the demo model: requests that need a short derivation to answer right.

Each `Conversation` is chat messages in the model's real format (system prompt, optional tools, user
request, optional earlier tool-call turn and tool response) plus the assistant's reply: `reasoning` (one
derivation step a line, so that a thinking budget that closes at a newline keeps whole steps) and the
`answer`, which is either text or one tool call. The reasoning computes the intermediate values the answer
depends on, so that answering without it means doing the whole derivation in one step.

Task families (`Family`):
- REACH: which arm reaches an object first, by Manhattan distance from each arm's base;
- TRAVEL: seconds to a place two legs away at a given speed (a sum, digit by digit, then a division);
- STACK: which boxes to lift, top first, to reach a box inside one of a few stacks (find the stack that holds
  it, read the boxes above it, reverse them). The reasoning copies the stack from the box wanted up, in the
  request's own words, so each box it writes is the one that directly followed the box before it in the
  request (no comma between them: the token to match is the one just written), down to the "(top)" that
  ends each stack there (unmarked, with commas, a copy ran on into the next stack or stopped short, by the
  stacks' heights rather than by the words).
  (Stacks stated as a chain of shuffled "On the X box is the Y box" facts were learned fact order by fact
  order: a held-out order failed for every colouring of it, and a passed one for every colouring);
- TOOL: a tool call whose arguments need the same derivations (`navigate_to` with a summed distance,
  `move_arm` with the nearer arm), and replies to a tool response: the grasp report says whether the arm
  holds the object, and the reply says whether it was picked up.

Every name the reply copies is written after the words it followed where it was read (the request's last
sentence, "Go to the shelf.", starts the reasoning, whose "to the shelf" becomes "location shelf" and the call's
`"location": "shelf"`), because what a small model copies reliably is the token after a match of the
tokens before it. A model trained on "Call navigate_to with location X", where nothing before X matched
the request, wrote the same place for every request. The reply to a grasp report names no object: read
back from the request three turns earlier, the object was right in one trained model and the same object
for every request in the next.

Train and held-out items differ in their numbers and combinations, not only in names: every item has a
key made of its numbers and its structure (the arm coordinates, the legs and speed, the stacks' heights and
where the box wanted stands), and `split_of(key)` puts it in one split for good (a stable hash, the same
on every machine).
`conversations(split, seed, count)` draws items of that split only, deterministically for a seed
(`random.Random` is specified the same on every platform).
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

SYSTEM_PROMPT = "You are the assistant of a two-armed mobile robot. Answer briefly."
HELD_OUT_PERCENT = 10  # of all keys; the held-out split never shows up in training


class Split(enum.Enum):
    TRAIN = "train"
    HELD_OUT = "held_out"


class Family(enum.Enum):
    REACH = "reach"
    TRAVEL = "travel"
    STACK = "stack"
    TOOL = "tool"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def text(self) -> str:
        """The call as the model writes it (the chat template's format)."""
        return "<TOOLCALL>[" + json.dumps({"name": self.name, "arguments": self.arguments}) + "]</TOOLCALL>"


@dataclass(frozen=True)
class Conversation:
    family: Family
    key: tuple  # the item's numbers and structure, which decide its split
    messages: list[dict[str, Any]]  # up to and including the last user or tool message
    reasoning: str  # lines of derivation, no think tags
    answer: str  # the final text answer; "" when the reply is a tool call
    tool_call: ToolCall | None = None
    tools: list[dict[str, Any]] | None = field(default=None)

    def reply(self) -> str:
        """The assistant's reply after the template's `<think>\\n`: reasoning, close tag, answer or call."""
        return self.reasoning + "\n</think>\n\n" + (self.tool_call.text() if self.tool_call else self.answer)


def split_of(key: tuple) -> Split:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return Split.HELD_OUT if int.from_bytes(digest, "little") % 100 < HELD_OUT_PERCENT else Split.TRAIN


OBJECTS = ("cup", "bottle", "wrench", "apple", "sponge", "battery", "ball", "spoon", "cable", "tray")
PLACES = ("kitchen", "door", "charger", "shelf", "table", "window", "garage", "lab", "desk", "sink")
COLORS = ("red", "blue", "green", "yellow", "white", "black", "gray", "orange", "purple", "brown")

TOOLS: list[dict[str, Any]] = [
    {"name": "navigate_to", "description": "Drive to a place.",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                     "distance_m": {"type": "integer"}},
                    "required": ["location", "distance_m"]}},
    {"name": "move_arm", "description": "Move an arm to a point.",
     "parameters": {"type": "object", "properties": {"arm": {"type": "string", "enum": ["left", "right"]},
                                                     "x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["arm", "x", "y"]}},
]


@dataclass(frozen=True)
class Reach:
    """An object at (x, y) and two arm bases; the nearer arm by |dx| + |dy| (never a tie)."""

    x: int
    y: int
    left: tuple[int, int]
    right: tuple[int, int]

    @staticmethod
    def draw(rng: random.Random) -> Reach:
        while True:
            r = Reach(rng.randint(0, 9), rng.randint(0, 9), (rng.randint(0, 4), rng.randint(0, 9)),
                      (rng.randint(5, 9), rng.randint(0, 9)))
            if r.distance(r.left) != r.distance(r.right):
                return r

    def key(self) -> tuple:
        return ("reach", self.x, self.y, self.left, self.right)

    def distance(self, arm: tuple[int, int]) -> int:
        return abs(self.x - arm[0]) + abs(self.y - arm[1])

    def arm(self) -> str:
        return "left" if self.distance(self.left) < self.distance(self.right) else "right"

    def question(self, obj: str) -> str:
        return (f"The {obj} is at x {self.x}, y {self.y}. The left arm is at x {self.left[0]}, y {self.left[1]} "
                f"and the right arm is at x {self.right[0]}, y {self.right[1]}.")

    def reasoning(self) -> str:
        lines = []
        for side, (ax, ay) in (("Left", self.left), ("Right", self.right)):
            (x0, x1), (y0, y1) = sorted((self.x, ax), reverse=True), sorted((self.y, ay), reverse=True)
            lines.append(f"{side} arm: x {x0} - {x1} = {x0 - x1}, y {y0} - {y1} = {y0 - y1}, "
                         f"total {x0 - x1} + {y0 - y1} = {x0 - x1 + y0 - y1}.")
        near, far = sorted((self.distance(self.left), self.distance(self.right)))
        lines.append(f"{near} is less than {far}, so the {self.arm()} arm is closer.")
        return "\n".join(lines)


@dataclass(frozen=True)
class Travel:
    """Two legs, `first` then `second` meters, at `speed` meters per second; the time is a whole number."""

    first: int
    second: int
    speed: int

    @staticmethod
    def draw(rng: random.Random) -> Travel:
        while True:  # both legs at least 2 meters (plural "meters" reads right)
            speed, seconds = rng.randint(1, 5), rng.randint(2, 9)
            total = speed * seconds
            if total >= 4:
                first = rng.randint(2, total - 2)
                return Travel(first, total - first, speed)

    def key(self) -> tuple:
        return ("travel", self.first, self.second, self.speed)

    def total(self) -> int:
        return self.first + self.second

    def seconds(self) -> int:
        return self.total() // self.speed

    def distance_lines(self) -> str:
        """The sum digit by digit, ones (and their carry) then tens, then the total: a sum of two numbers
        learned whole is learned pair by pair, and a held-out pair is one the model never saw."""
        a, b = self.first, self.second
        ones = a % 10 + b % 10
        tens = a // 10 + b // 10 + ones // 10
        return (f"Ones: {a % 10} + {b % 10} = {ones}.\nTens: {a // 10} + {b // 10} + {ones // 10} = {tens}.\n"
                f"Distance: {a} + {b} = {self.total()} meters.")


@dataclass(frozen=True)
class Stack:
    """Stacks of boxes named by color, each listed from the bottom up; the box wanted is
    `stacks[index][level]`, never a top box, so the boxes above it must be lifted first, top first."""

    stacks: tuple[tuple[str, ...], ...]
    index: int
    level: int

    @staticmethod
    def draw(rng: random.Random) -> Stack:
        while True:
            heights = [rng.randint(1, 4) for _ in range(rng.randint(2, 3))]
            if sum(heights) <= len(COLORS) and max(heights) >= 2:
                break
        colors = rng.sample(COLORS, sum(heights))
        stacks = tuple(tuple(colors[sum(heights[:i]):sum(heights[:i + 1])]) for i in range(len(heights)))
        index = rng.choice([i for i, h in enumerate(heights) if h >= 2])
        return Stack(stacks, index, rng.randrange(heights[index] - 1))

    def key(self) -> tuple:
        return ("stack", tuple(len(s) for s in self.stacks), self.index, self.level)

    def wanted(self) -> str:
        return self.stacks[self.index][self.level]

    def from_wanted_up(self) -> list[str]:
        return list(self.stacks[self.index][self.level:])

    def to_lift(self) -> list[str]:
        return list(reversed(self.from_wanted_up()[1:]))

    def question(self) -> str:
        return ("Stacks of boxes, each from the bottom up: " + "; ".join(" ".join(s) + " (top)" for s in self.stacks)
                + f". The robot needs the {self.wanted()} box. Which boxes must it lift first?")

    def reasoning(self) -> str:
        return (f"From the {self.wanted()} box up: " + " ".join(self.from_wanted_up()) + " (top).\n"
                + "Lift from the top: " + ", then ".join(self.to_lift()) + ".")

    def answer(self) -> str:
        return "Lift the " + " box, then the ".join(self.to_lift()) + " box."


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def _reach(rng: random.Random, split: Split) -> Conversation:
    r = _draw(rng, split, Reach.draw)
    obj = rng.choice(OBJECTS)
    return Conversation(Family.REACH, r.key(), _user(r.question(obj) + " Which arm should pick it up?"), r.reasoning(),
                        f"The {r.arm()} arm.")


def _travel(rng: random.Random, split: Split) -> Conversation:
    t = _draw(rng, split, Travel.draw)
    a, b = rng.sample(PLACES, 2)
    question = (f"The robot drives at {t.speed} meters per second. The {a} is {t.first} meters away and the {b} "
                f"is {t.second} meters past the {a}. How long does it take to reach the {b}?")
    reasoning = t.distance_lines() + f"\nTime: {t.total()} / {t.speed} = {t.seconds()} seconds."
    return Conversation(Family.TRAVEL, t.key(), _user(question), reasoning, f"{t.seconds()} seconds.")


def _stack(rng: random.Random, split: Split) -> Conversation:
    s = _draw(rng, split, Stack.draw)
    return Conversation(Family.STACK, s.key(), _user(s.question()), s.reasoning(), s.answer())


def _tool(rng: random.Random, split: Split) -> Conversation:
    kind = rng.randrange(3)
    if kind == 0:  # navigate_to with the summed distance: the legs are all the request says
        t = _draw(rng, split, Travel.draw, key=lambda t: ("legs", t.first, t.second))
        a, b = rng.sample(PLACES, 2)
        question = f"The {a} is {t.first} meters ahead and the {b} is {t.second} meters past it. Go to the {b}."
        call = ToolCall("navigate_to", {"location": b, "distance_m": t.total()})
        reasoning = f"Go to the {b}.\n" + t.distance_lines() + f"\nCall navigate_to to the {b}: location {b}, distance_m {t.total()}."
        return Conversation(Family.TOOL, ("legs", t.first, t.second), _user(question), reasoning, "", call, TOOLS)
    r = _draw(rng, split, Reach.draw)
    obj = rng.choice(OBJECTS)
    call = ToolCall("move_arm", {"arm": r.arm(), "x": r.x, "y": r.y})
    reasoning = r.reasoning() + f"\nCall move_arm with arm {r.arm()}, x {r.x} and y {r.y}."
    messages = _user(r.question(obj) + f" Pick up the {obj}.")
    if kind == 1:
        return Conversation(Family.TOOL, r.key(), messages, reasoning, "", call, TOOLS)
    # A reply to the tool's response: the earlier call is history, the reasoning reads the response.
    grip = rng.randint(10, 99)
    held = rng.random() < 0.5
    messages = messages + [
        {"role": "assistant", "content": "", "tool_calls": [{"name": call.name, "arguments": call.arguments}]},
        {"role": "tool", "content": json.dumps({"object": obj, "holding": held, "grip_force": grip})}]
    grasp = f"holds it with force {grip}" if held else "holds nothing"
    reasoning = f"Holding {json.dumps(held)}: the {r.arm()} arm {grasp}."
    answer = "I picked it up." if held else "I could not pick it up."
    return Conversation(Family.TOOL, r.key(), messages, reasoning, answer, None, TOOLS)


def _draw(rng: random.Random, split: Split, draw: Callable[[random.Random], Any],
          key: Callable[[Any], tuple] | None = None) -> Any:
    while True:
        item = draw(rng)
        if split_of(key(item) if key else item.key()) is split:
            return item


MAKERS: dict[Family, Callable[[random.Random, Split], Conversation]] = {
    Family.REACH: _reach, Family.TRAVEL: _travel, Family.STACK: _stack, Family.TOOL: _tool}


def conversations(split: Split, seed: int, count: int, mix: dict[Family, int] | None = None) -> Iterator[Conversation]:
    """`count` conversations of `split`, deterministic for `seed`: the families in turn, or in a cycle where
    each family comes `mix[family]` times (in turn while each has some left)."""
    rng = random.Random(f"{split.value}:{seed}")
    left = dict(mix) if mix else {f: 1 for f in Family}
    cycle = []
    while any(left.values()):
        for f in Family:
            if left.get(f, 0):
                cycle.append(f)
                left[f] -= 1
    for i in range(count):
        yield MAKERS[cycle[i % len(cycle)]](rng, split)


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def is_correct(conv: Conversation, answer_text: str, calls: list[tuple[str, str]]) -> bool:
    """Whether a reply is right: the answer text equal to the reference after normalising case and
    whitespace, or exactly one tool call (`(name, arguments JSON)`) that parses, names the reference tool
    and carries exactly its arguments."""
    if conv.tool_call is None:
        return not calls and normalized(answer_text) == normalized(conv.answer)
    if len(calls) != 1 or calls[0][0] != conv.tool_call.name:
        return False
    try:
        return json.loads(calls[0][1]) == conv.tool_call.arguments
    except json.JSONDecodeError:
        return False
