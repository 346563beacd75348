"""LeRobotDataset (v3.0, v2.1) in and out: `LeRobotSource` for training, `export_lerobot` for our episodes.

    sim.lerobot.meta    info.json, tasks, the episode index; the feature mapping (`--features`)
    sim.lerobot.source  LeRobotSource: an EpisodeSource over a local LeRobot folder
    sim.lerobot.video   MP4 decode (by timestamp, per-worker decoder cache) and encode, through PyAV
    sim.lerobot.writer  export_lerobot: our episodes -> a v3.0 dataset (what `vla dataset export` runs)
"""

from sim.lerobot.meta import FeatureMap, LeRobotMeta, is_lerobot_dataset, parse_features
from sim.lerobot.source import LeRobotSource, open_lerobot

__all__ = ["FeatureMap", "LeRobotMeta", "LeRobotSource", "is_lerobot_dataset", "open_lerobot", "parse_features"]
