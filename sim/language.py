"""Instructions for the 50 Meta-World v3 tasks, phrased as a person would say them.

Each task has training paraphrases (used for collection and by default in the environment) and held-out
paraphrases (never used for collection; the evaluation default) so a policy can be tested on wording it has
not seen. Which paraphrase an episode gets is drawn from the episode seed: the same seed gives the same words.
"""

from __future__ import annotations

import string
import zlib

import numpy as np

# Characters an instruction may contain: the gymnasium Text space of the observation uses this set.
CHARSET = string.ascii_letters + string.digits + " ,.'-"
MAX_LENGTH = 120

# task -> (training paraphrases, held-out paraphrases)
INSTRUCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "assembly-v3": (
        ("put the ring onto the peg", "pick up the nut and drop it over the red peg",
         "slide the round nut down onto the peg", "assemble the nut onto the peg"),
        ("grab the ring by its handle and fit it over the peg", "place the nut on the post"),
    ),
    "basketball-v3": (
        ("dunk the ball into the hoop", "pick up the basketball and put it in the basket",
         "score a basket with the ball", "grab the ball and drop it through the hoop"),
        ("slam dunk the basketball", "lift the ball up and into the net"),
    ),
    "bin-picking-v3": (
        ("move the cube from the left bin to the right bin", "pick the block out of one bin and drop it in the other",
         "transfer the cube into the empty bin", "take the cube out of its bin and put it in the other one"),
        ("carry the little block over to the second bin", "put the cube into the other box"),
    ),
    "box-close-v3": (
        ("put the lid on the box", "close the box with its lid", "pick up the lid and cover the box",
         "place the cover on top of the box"),
        ("grab the lid and shut the box", "cap the box"),
    ),
    "button-press-topdown-v3": (
        ("press the button from the top", "push the button down from above", "press down on the button",
         "hit the button from above"),
        ("push the top button straight down", "tap the button from overhead"),
    ),
    "button-press-topdown-wall-v3": (
        ("press the button from the top behind the wall", "reach over the wall and push the button down",
         "push the button down from above, past the wall", "press down on the button beyond the wall"),
        ("get around the wall and press the button from above", "hit the button behind the wall from overhead"),
    ),
    "button-press-v3": (
        ("press the button", "push the button in from the front", "press the button on the box",
         "push the button forward"),
        ("poke the button in", "push in the button on the front of the box"),
    ),
    "button-press-wall-v3": (
        ("press the button behind the wall", "reach around the wall and push the button",
         "push the button in, going past the wall", "press the button on the other side of the wall"),
        ("get past the wall and push the button in", "poke the button that is behind the wall"),
    ),
    "coffee-button-v3": (
        ("press the button on the coffee machine", "push the coffee machine's button",
         "start the coffee machine", "hit the button on the coffee maker"),
        ("turn on the coffee maker", "make a coffee by pressing the machine's button"),
    ),
    "coffee-pull-v3": (
        ("pull the mug away from the coffee machine", "take the cup out from under the coffee machine",
         "slide the mug back toward you", "move the mug out of the coffee machine"),
        ("drag the coffee cup out from the machine", "get the mug from under the spout"),
    ),
    "coffee-push-v3": (
        ("push the mug under the coffee machine", "slide the cup under the coffee spout",
         "put the mug in the coffee machine", "move the cup beneath the coffee maker"),
        ("shove the coffee cup into the machine", "get the mug under the spout"),
    ),
    "dial-turn-v3": (
        ("turn the dial", "rotate the knob", "spin the dial around", "twist the dial to the other side"),
        ("give the knob a turn", "rotate the dial half a turn"),
    ),
    "disassemble-v3": (
        ("take the ring off the peg", "lift the nut off the peg", "pull the round nut up and off the post",
         "remove the nut from the peg"),
        ("unstack the ring from the peg", "grab the ring by its handle and lift it off"),
    ),
    "door-close-v3": (
        ("close the door", "push the door shut", "swing the door closed", "shut the open door"),
        ("close the cabinet door", "push the door until it is closed"),
    ),
    "door-lock-v3": (
        ("lock the door", "turn the lock down to lock the door", "rotate the door lock closed",
         "flip the lock on the door"),
        ("turn the knob on the door to lock it", "secure the door lock"),
    ),
    "door-open-v3": (
        ("open the door", "pull the door open by its handle", "swing the door open",
         "grab the handle and open the door"),
        ("pull open the cabinet door", "open the door all the way"),
    ),
    "door-unlock-v3": (
        ("unlock the door", "turn the lock to unlock the door", "rotate the door lock open",
         "flip the lock back to unlock it"),
        ("release the lock on the door", "turn the door knob to unlock it"),
    ),
    "hand-insert-v3": (
        ("put your hand into the hole", "reach into the hole in the table", "insert the gripper into the hole",
         "move the hand down into the hole"),
        ("stick the gripper in the hole", "lower the hand into the opening"),
    ),
    "drawer-close-v3": (
        ("close the drawer", "push the drawer shut", "slide the drawer closed", "push the drawer back in"),
        ("shut the drawer", "push in the open drawer"),
    ),
    "drawer-open-v3": (
        ("open the drawer", "pull the drawer open", "slide the drawer out by its handle", "pull out the drawer"),
        ("grab the handle and open the drawer", "pull the drawer toward you"),
    ),
    "faucet-open-v3": (
        ("turn on the faucet", "open the tap", "rotate the faucet handle to open it", "turn the tap on"),
        ("turn the water on", "swing the faucet handle open"),
    ),
    "faucet-close-v3": (
        ("turn off the faucet", "close the tap", "rotate the faucet handle to close it", "turn the tap off"),
        ("turn the water off", "swing the faucet handle closed"),
    ),
    "hammer-v3": (
        ("hammer the nail into the wall", "pick up the hammer and hit the nail", "drive the nail in with the hammer",
         "use the hammer to knock the nail in"),
        ("grab the hammer and pound the nail", "bang the peg in with the hammer"),
    ),
    "handle-press-side-v3": (
        ("press the handle down from the side", "push the side handle down", "press down on the handle sideways",
         "push the handle down, coming from the side"),
        ("push down the lever on the side", "press the sideways handle down"),
    ),
    "handle-press-v3": (
        ("press the handle down", "push the handle down", "press down on the handle", "push the lever handle down"),
        ("push down the handle in front of you", "press the handle all the way down"),
    ),
    "handle-pull-side-v3": (
        ("pull the handle up from the side", "lift the side handle up", "pull up on the handle sideways",
         "raise the handle, coming from the side"),
        ("pull up the lever on the side", "lift the sideways handle"),
    ),
    "handle-pull-v3": (
        ("pull the handle up", "lift the handle up", "pull up on the handle", "raise the handle"),
        ("pull the lever handle up", "lift the handle all the way up"),
    ),
    "lever-pull-v3": (
        ("pull the lever up", "lift the lever", "raise the lever", "flip the lever up"),
        ("push the lever up to the top", "pull up on the lever"),
    ),
    "peg-insert-side-v3": (
        ("insert the peg into the hole from the side", "pick up the peg and push it into the hole",
         "put the peg in the hole sideways", "slide the peg into the side hole"),
        ("plug the peg into the box", "fit the peg into the opening on the side"),
    ),
    "pick-place-wall-v3": (
        ("pick up the puck and place it at the goal behind the wall", "lift the puck over the wall onto the goal",
         "put the puck on the target past the wall", "carry the puck over the wall to the goal"),
        ("move the puck to the other side of the wall", "grab the puck and set it down behind the wall"),
    ),
    "pick-out-of-hole-v3": (
        ("pick the puck out of the hole", "lift the puck out of the hole", "take the puck out of the hole",
         "grab the puck in the hole and raise it"),
        ("get the puck up out of the hole", "fish the puck out of the hole"),
    ),
    "reach-v3": (
        ("reach the goal", "move your hand to the target", "touch the goal with the gripper", "go to the goal"),
        ("put the gripper on the target point", "move the hand over to the goal"),
    ),
    "push-back-v3": (
        ("push the puck back to the goal", "pull the puck back toward you to the goal",
         "slide the puck backward onto the target", "move the puck back to the goal"),
        ("drag the puck back to the target", "bring the puck back to the goal"),
    ),
    "push-v3": (
        ("push the puck to the green goal", "slide the puck to the goal", "push the puck onto the target",
         "move the puck to the goal by pushing it"),
        ("shove the puck over to the goal", "nudge the puck onto the green target"),
    ),
    "pick-place-v3": (
        ("pick up the puck and place it at the goal", "put the puck on the goal", "move the puck to the target",
         "grab the puck and set it down at the goal"),
        ("carry the puck over to the goal", "lift the puck and drop it on the target"),
    ),
    "plate-slide-v3": (
        ("slide the plate into the cabinet", "push the plate into the goal", "slide the plate forward into the slot",
         "push the plate in"),
        ("shove the plate into the cabinet", "move the plate into the opening"),
    ),
    "plate-slide-side-v3": (
        ("slide the plate into the cabinet from the side", "push the plate sideways into the goal",
         "slide the plate in sideways", "push the plate into the slot from the side"),
        ("shove the plate sideways into the cabinet", "move the plate in from the side"),
    ),
    "plate-slide-back-v3": (
        ("slide the plate out of the cabinet", "pull the plate back out", "take the plate out of the slot",
         "slide the plate back toward you"),
        ("get the plate out of the cabinet", "drag the plate back out"),
    ),
    "plate-slide-back-side-v3": (
        ("slide the plate out of the cabinet sideways", "pull the plate out to the side",
         "take the plate out of the slot from the side", "slide the plate back out sideways"),
        ("get the plate out of the cabinet from the side", "drag the plate out sideways"),
    ),
    "peg-unplug-side-v3": (
        ("unplug the peg", "pull the peg out of the hole", "take the peg out sideways", "pull the plug out"),
        ("remove the peg from the box", "yank the peg out of its socket"),
    ),
    "soccer-v3": (
        ("kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball",
         "shoot the ball into the goal"),
        ("get the soccer ball into the net", "roll the ball into the goal"),
    ),
    "stick-push-v3": (
        ("use the stick to push the box", "grab the stick and push the box with it",
         "pick up the stick and shove the box to the goal", "push the box using the stick"),
        ("move the box by pushing it with the stick", "take the stick and nudge the box forward"),
    ),
    "stick-pull-v3": (
        ("use the stick to pull the box", "grab the stick and pull the box with it",
         "pick up the stick and drag the box to the goal", "pull the box using the stick"),
        ("hook the box with the stick and pull it over", "take the stick and drag the box back"),
    ),
    "push-wall-v3": (
        ("push the puck around the wall to the goal", "slide the puck past the wall onto the goal",
         "push the puck to the target behind the wall", "get the puck around the wall to the goal"),
        ("shove the puck past the wall to the target", "nudge the puck around the wall onto the goal"),
    ),
    "reach-wall-v3": (
        ("reach the goal behind the wall", "move your hand over the wall to the target",
         "touch the goal past the wall", "go around the wall to the goal"),
        ("get the gripper to the target on the other side of the wall", "reach over the wall to the goal"),
    ),
    "shelf-place-v3": (
        ("put the block on the shelf", "pick up the cube and place it on the shelf", "move the block onto the shelf",
         "set the cube down on the shelf"),
        ("lift the block up onto the shelf", "place the cube on the shelf"),
    ),
    "sweep-into-v3": (
        ("sweep the cube into the hole", "push the block into the hole", "slide the cube into the hole",
         "sweep the block into the opening"),
        ("knock the cube into the hole", "brush the block into the hole"),
    ),
    "sweep-v3": (
        ("sweep the cube off the table", "push the block off the edge", "slide the cube off the table",
         "sweep the block off the side"),
        ("knock the cube off the table", "brush the block over the edge"),
    ),
    "window-open-v3": (
        ("open the window", "slide the window open", "push the window open", "slide the window to open it"),
        ("open up the window", "slide the window sash open"),
    ),
    "window-close-v3": (
        ("close the window", "slide the window shut", "push the window closed", "slide the window to close it"),
        ("shut the window", "slide the window sash closed"),
    ),
}

SPLITS = ("train", "heldout")


def paraphrases(task: str, split: str = "train") -> tuple[str, ...]:
    """All paraphrases of `task` in `split` ('train' or 'heldout')."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}: expected one of the 50 Meta-World v3 tasks, e.g. 'push-v3'")
    if split not in SPLITS:
        raise ValueError(f"instruction split {split!r} is not one of {SPLITS}")
    return INSTRUCTIONS[task][0 if split == "train" else 1]


def choose_instruction(task: str, seed: int, split: str = "train") -> str:
    """The paraphrase an episode with this seed uses: a pure function of (task, seed, split)."""
    options = paraphrases(task, split)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(task.encode())])
    return options[int(rng.integers(len(options)))]
