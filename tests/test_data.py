"""Data: LeRobot v2.1/v3.0 round trips, chunks at each source's fps, soups, stats, malformed datasets."""

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from neon.action_space import G1ActionSpace
from neon.data.lerobot import DatasetError, EpisodeData, LeRobotDataset, write_dataset
from neon.data.soup import DataSoup, DataSoupConfig, DataSourceConfig, collate
from neon.data.sources import LeRobotSource, VoiceCommandSource, write_wav
from neon.data.stats import norm_stats_for
from neon.data.synthetic import CAMERA_KEY as CAMERA
from neon.data.synthetic import SynthConfig, generate
from neon.data.video import VideoReader
from neon.normalization import ActionTransform, NormStats

ARMS = G1ActionSpace("arms_only")


def ramp_dataset(root, fps, lengths, version="v3.0", codec="av1", names=None, modality=None):
    """Episodes whose action at frame t is (episode*1000 + t) on every dim, and whose frames encode t as brightness."""
    names = names or ARMS.names
    d = len(names)
    eps = []
    for e, n in enumerate(lengths):
        t = np.arange(n, dtype=np.float32)
        value = (e * 1000 + t)[:, None] * np.ones(d, np.float32) / 1000
        video = np.zeros((n, 64, 96, 3), np.uint8)  # grey levels: luma survives every codec best
        video[:, :32] = (t * 7 % 250)[:, None, None, None]  # top half: the frame index
        video[:, 32:] = 40 * e  # bottom half: the episode
        eps.append(EpisodeData(f"task {e % 2}", {"observation.state": value - 0.001, "action": value},
                               {"observation.images.cam_high": video}))
    feats = {"observation.images.cam_high": {"dtype": "video", "shape": [64, 96, 3]},
             "observation.state": {"dtype": "float32", "shape": [d], "names": names},
             "action": {"dtype": "float32", "shape": [d], "names": names}}
    extra = {"modality.json": modality} if modality else None
    return write_dataset(root, eps, fps=fps, features=feats, version=version, codec=codec, extra_meta=extra)


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
@pytest.mark.parametrize("codec", ["av1", "h264", "mpeg4"])
def test_writer_reader_round_trip(tmp_path, version, codec):
    root = ramp_dataset(tmp_path / "ds", 30, [12, 9, 15], version=version, codec=codec)
    ds = LeRobotDataset(root)
    assert ds.version == version and ds.fps == 30 and [e.length for e in ds.episodes] == [12, 9, 15]
    assert ds.info["features"]["observation.images.cam_high"]["info"]["video.codec"] == codec
    reader = VideoReader()
    for ep in ds.episodes:
        cols = ds.columns(ep)
        assert np.allclose(cols["action"][:, 0], (ep.index * 1000 + np.arange(ep.length)) / 1000)
        assert ds.task_of(ep, cols, 0) == f"task {ep.index % 2}"
        path, start = ds.video_path(ep, "observation.images.cam_high")
        for t in range(ep.length):
            frame = reader.frame(path, start + t / ds.fps, ds.fps)
            assert frame.shape == (64, 96, 3)
            # Lossy codecs: brightness within a few levels of what was written.
            assert abs(float(frame[4:28].mean()) - t * 7 % 250) < 3, (ep.index, t)  # frames are 7 levels apart
            assert abs(float(frame[36:60].mean()) - 40 * ep.index) < 3
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert stats["action"]["count"] == [36] and len(stats["action"]["mean"]) == ARMS.dim


def test_v30_layout_matches_lerobot(tmp_path):
    import pyarrow.parquet as pq

    root = ramp_dataset(tmp_path / "ds", 30, [5, 7])
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == [(0, 5), (5, 12)]
    assert rows[1]["videos/observation.images.cam_high/from_timestamp"] == pytest.approx(5 / 30)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.schema.pandas_metadata["index_columns"] == ["__index_level_0__"]
    assert (root / "videos/observation.images.cam_high/chunk-000/file-000.mp4").is_file()


@pytest.mark.parametrize("fps", [5.0, 30.0])
def test_chunks_and_padding_at_episode_ends(tmp_path, fps):
    root = ramp_dataset(tmp_path / "ds", fps, [20, 10])
    src = LeRobotSource(str(root), ARMS, num_steps=16)
    assert len(src) == 30 and src.fps == fps
    # Frame 0 of episode 1 (global index 20): 10 real steps, then the last action repeated and masked out.
    s = src.sample(20)
    assert s["fps"] == fps  # step i of the chunk is i / fps seconds after t: 3.2 s at 5 fps, 0.53 s at 30 fps
    expected = (1000 + np.minimum(np.arange(16), 9)) / 1000
    assert np.allclose(s["actions"][:, 0], expected)
    assert s["action_mask"].all(axis=1).tolist() == [True] * 10 + [False] * 6
    # Last frame of episode 0: one real step.
    s = src.sample(19)
    assert np.allclose(s["actions"][:, 3], 19 / 1000) and s["action_mask"][:, 0].sum() == 1
    # A chunk well inside an episode is all real.
    s = src.sample(2)
    assert np.allclose(s["actions"][:, 5], (2 + np.arange(16)) / 1000) and s["action_mask"].all()
    assert abs(float(s["obs"].image[4:28].mean()) - 14) < 3  # frame t = 2 decoded


def test_names_mapped_and_unmapped_reported_once(tmp_path, caplog):
    names = [f"{n}_joint" for n in ARMS.names[:20]] + ["left_gripper_camera_tilt"]
    root = ramp_dataset(tmp_path / "ds", 30, [6], names=names)
    with caplog.at_level(logging.WARNING):
        src = LeRobotSource(str(root), ARMS, 16)
        for i in range(6):
            src.sample(i)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "left_gripper_camera_tilt" in w]) == 1
    assert "right_hand_middle_1" in warnings[0]  # missing dims are named too
    s = src.sample(0)
    assert s["action_mask"][0, :20].all() and not s["action_mask"][:, 20:].any()


def test_dataset_for_another_robot_is_refused(tmp_path):
    root = ramp_dataset(tmp_path / "ds", 30, [4], names=["x", "y", "z", "gripper"])
    with pytest.raises(DatasetError, match="none of the dataset's action names match"):
        LeRobotSource(str(root), ARMS, 16)


def test_groot_modality_json_names_slices(tmp_path):
    flat = [f"v{i}" for i in range(17)]
    modality = {"state": {"left_arm": {"start": 0, "end": 7}, "left_hand": {"start": 7, "end": 14},
                          "neck": {"start": 14, "end": 17}},
                "action": {"left_arm": {"start": 0, "end": 7}, "left_hand": {"start": 7, "end": 14},
                           "neck": {"start": 14, "end": 17}}}
    root = ramp_dataset(tmp_path / "ds", 30, [5], version="v2.1", names=flat, modality=modality)
    src = LeRobotSource(str(root), ARMS, 16)
    assert src.ds.modality is not None
    left_hand_unitree_order = [f"left_hand_{j}" for j in ("thumb_0", "thumb_1", "thumb_2", "middle_0", "middle_1",
                                                          "index_0", "index_1")]
    assert [ARMS.names[i] for i in src.action_map.target_index] == ARMS.names[:7] + left_hand_unitree_order
    assert src.action_map.unmapped_source == ["neck.0", "neck.1", "neck.2"]  # GR1's 3-DOF neck is not the G1's


UNITREE_NAMES = (  # as Unitree's converters write them: SDK enum names, Dex3 left hand middle before index
    [f"k{s.title()}{j}" for s in ("left", "right") for j in ("ShoulderPitch", "ShoulderRoll", "ShoulderYaw", "Elbow",
                                                             "WristRoll", "WristPitch", "WristYaw")]
    + [f"kLeftHand{j}" for j in ("Thumb0", "Thumb1", "Thumb2", "Middle0", "Middle1", "Index0", "Index1")]
    + [f"kRightHand{j}" for j in ("Thumb0", "Thumb1", "Thumb2", "Index0", "Index1", "Middle0", "Middle1")])


@pytest.mark.parametrize("layout", ["flat", "list_of_one_list", "dict_motors", "dict_per_part", "null"])
def test_every_names_layout_maps_by_name(tmp_path, layout):
    names = {"flat": UNITREE_NAMES, "list_of_one_list": [UNITREE_NAMES], "dict_motors": {"motors": UNITREE_NAMES},
             "dict_per_part": {"arms": UNITREE_NAMES[:14], "hands": UNITREE_NAMES[14:]}, "null": None}[layout]
    root = ramp_dataset(tmp_path / "ds", 30, [4], names=UNITREE_NAMES)
    info = json.loads((root / "meta" / "info.json").read_text())
    for key in ("observation.state", "action"):
        info["features"][key]["names"] = names
    (root / "meta" / "info.json").write_text(json.dumps(info))
    if layout == "null":
        with pytest.raises(DatasetError, match="none of the dataset's action names match"):
            LeRobotSource(str(root), ARMS, 16)
        return
    src = LeRobotSource(str(root), ARMS, 16)
    assert src.action_map.complete and not src.action_map.unmapped_source
    # Column k of the dataset lands on the joint it names, whatever the hand's order.
    mapped = {ARMS.names[t]: UNITREE_NAMES[s] for s, t in zip(src.action_map.source_index, src.action_map.target_index,
                                                               strict=True)}
    assert mapped["left_hand_middle_0"] == "kLeftHandMiddle0" and mapped["right_hand_middle_0"] == "kRightHandMiddle0"
    assert mapped["left_hand_index_1"] == "kLeftHandIndex1" and mapped["right_shoulder_yaw"] == "kRightShoulderYaw"


def test_groot_modality_json_is_only_a_fallback_to_names(tmp_path):
    """With real per-dimension names, a modality.json whose slices would misplace joints does not matter."""
    shuffled = UNITREE_NAMES[14:] + UNITREE_NAMES[:14]  # hands first
    modality = {k: {"left_arm": {"start": 0, "end": 7}, "right_arm": {"start": 7, "end": 14}} for k in ("state", "action")}
    root = ramp_dataset(tmp_path / "ds", 30, [4], names=shuffled, modality=modality)
    src = LeRobotSource(str(root), ARMS, 16)
    assert src.action_map.complete
    assert ARMS.names[src.action_map.target_index[0]] == "left_hand_thumb_0"  # by name, not by the slices


def test_relative_absolute_transform_round_trip():
    space = G1ActionSpace("whole_body", representation={"arms": "relative", "hands": "relative", "legs": "relative"})
    rng = np.random.default_rng(0)
    stats = NormStats(space.names, rng.normal(size=space.dim), rng.uniform(0.5, 2, space.dim),
                      rng.normal(size=space.dim), rng.uniform(0.5, 2, space.dim))
    tf = ActionTransform(space, stats, action_scaler=20.0)
    actions = torch.from_numpy(rng.uniform(space.lower, space.upper, (4, 16, space.dim)).astype(np.float32))
    state = torch.from_numpy(rng.uniform(space.lower, space.upper, (4, space.dim)).astype(np.float32))
    z = tf.encode(actions, state)
    assert torch.allclose(tf.decode(z, state), actions, atol=1e-4)
    rel = tf.to_representation(actions, state)
    arms = space.group_slice("arms")
    assert torch.allclose(rel[..., arms], 20.0 * (actions[..., arms] - state[:, None, arms]), atol=1e-4)
    loco = space.group_slice("locomotion")
    assert torch.allclose(rel[..., loco], actions[..., loco])  # commands stay absolute


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate(root / "arms", SynthConfig(episodes=8, length=30, image_size=64), progress=False)


def test_soup_frequencies_follow_weights(synth, tmp_path):
    other = ramp_dataset(tmp_path / "ramp", 5, [40, 40])
    cfg = DataSoupConfig([DataSourceConfig("synth", str(synth), weight=3.0),
                          DataSourceConfig("ramp", str(other), weight=1.0)], seed=7, fps=30.0)
    soup = DataSoup(cfg, ARMS, 16)
    n = 4000
    idx = np.array(list(soup.sampler(n)))
    from_synth = (idx < len(soup.sources[0])).mean()
    sigma = np.sqrt(0.75 * 0.25 / n)
    assert abs(from_synth - 0.75) < 4 * sigma, from_synth
    # Balanced by size: 240 synth frames vs 80 ramp frames, weights 3:1 -> 720:80.
    cfg.balance_by_size = True
    soup_b = DataSoup(cfg, ARMS, 16)
    assert soup_b.source_probabilities()[0] == pytest.approx(720 / 800)
    # Deterministic per (seed, epoch).
    s1, s2 = soup.sampler(100), soup.sampler(100)
    assert list(s1) == list(s2)
    s2.set_epoch(1)
    assert list(s1) != list(s2)


def test_soup_of_different_frame_rates_is_refused_or_resampled(synth, tmp_path):
    slow = generate(tmp_path / "slow", SynthConfig(episodes=2, length=15, fps=15.0, image_size=64), progress=False)
    sources = [DataSourceConfig("fast", str(synth)), DataSourceConfig("slow", str(slow))]
    with pytest.raises(DatasetError, match=r"differ in frame rate \(fast at 30 fps, slow at 15 fps\).*--fps"):
        DataSoup(DataSoupConfig(sources), ARMS, 16)
    soup = DataSoup(DataSoupConfig(sources, fps=30.0), ARMS, 16)
    assert soup.fps == 30.0
    src = soup.sources[1]
    actions, _, _ = src.episode_arrays(0)
    s = src.sample(3)  # frame 3 of a 15-frame, 15 fps episode: steps every 1/30 s = half a frame
    assert s["fps"] == 30.0 and src.fps == 15.0
    pos = 3 + np.arange(16) / 2
    lo, hi = np.floor(pos).astype(int), np.minimum(np.floor(pos).astype(int) + 1, 14)
    expected = actions[lo] + (pos - lo)[:, None] * (actions[hi] - actions[lo])
    assert np.allclose(s["actions"], expected, atol=1e-6)
    assert s["action_mask"].all()  # 3 + 15 / 2 = 10.5 <= 14: the whole chunk lies inside the episode
    end = src.sample(10)
    assert end["action_mask"][:, 0].tolist() == [True] * 9 + [False] * 7  # 10 + i / 2 <= 14 for i <= 8
    assert soup.sources[0].sample(0)["fps"] == 30.0  # the 30 fps source is untouched
    assert np.array_equal(soup.sources[0].sample(0)["actions"], DataSoup(DataSoupConfig(sources[:1]), ARMS, 16)[0]["actions"])


def test_loader_is_identical_with_several_workers(synth):
    cfg = DataSoupConfig([DataSourceConfig("synth", str(synth))], seed=3)
    soup = DataSoup(cfg, ARMS, 16)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(soup, batch_size=4, sampler=soup.sampler(24), num_workers=workers, collate_fn=collate)
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["actions"], b["actions"]) and a["obs"].instructions == b["obs"].instructions
        assert all(np.array_equal(x, y) for x, y in zip(a["obs"].images, b["obs"].images, strict=True))
    batch = batches[0][0]
    assert batch["actions"].shape == (4, 16, 28) and batch["obs"].lidar.shape == (4, 256, 4)
    assert batch["obs"].eef.shape == (4, 14) and batch["obs"].audio[0].ndim == 1


def _frame_in_child(reader, path, timestamp, fps, queue):
    queue.put(reader.frame(path, timestamp, fps))


def test_a_reader_used_before_a_fork_decodes_in_the_forked_child(synth):
    """DataLoader workers are forked from a process that has decoded frames. With PyAV 18 / FFmpeg 8 a worker then
    hung for good in swscale's slice threads (inherited without their threads) at its first frame; and a child must
    not share the parent's open files (their offsets are shared across a fork)."""
    import multiprocessing as mp

    ds = LeRobotDataset(synth)
    path, start = ds.video_path(ds.episodes[0], CAMERA)
    reader = VideoReader()
    expected = reader.frame(path, start + 0.3, ds.fps)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_frame_in_child, args=(reader, path, start + 0.3, ds.fps, queue))
    child.start()
    try:
        got = queue.get(timeout=60)  # a hung child leaves this empty
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert np.array_equal(got, expected)
    assert reader.frame(path, start + 0.3, ds.fps).shape == expected.shape  # the parent's files still work


def test_soup_file_yaml_and_json(tmp_path, synth):
    cfg = DataSoupConfig([DataSourceConfig("g1", str(synth), weight=2.0),
                          DataSourceConfig("dream", str(synth), type="cosmos_dreamgen", weight=1.5,
                                           use_relative_actions=True, action_scaler=20.0)], seed=1)
    for suffix in (".yaml", ".json"):
        cfg.save(tmp_path / f"soup{suffix}")
        back = DataSoupConfig.from_file(tmp_path / f"soup{suffix}")
        assert back.to_dict() == cfg.to_dict()
    assert cfg.action_representation() == (True, 20.0)
    (tmp_path / "bad.yaml").write_text("sources:\n  - name: a\n    path: x\n    type: rosbag\n")
    with pytest.raises(DatasetError, match="source 'a': type must be one of"):
        DataSoupConfig.from_file(tmp_path / "bad.yaml")
    cfg.sources.append(DataSourceConfig("dream2", str(synth), use_relative_actions=True, action_scaler=5.0))
    with pytest.raises(DatasetError, match="disagree on action_scaler"):
        cfg.action_representation()


def test_voice_commands_train_speech_and_are_masked(tmp_path, synth):
    vdir = tmp_path / "voice"
    vdir.mkdir()
    write_wav(vdir / "hello.wav", 0.2 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300))
    rows = [{"text": "hello robot", "response": "Hello!", "audio": "hello.wav"},
            {"text": "stop", "response": "Stopping now."}, {"text": "what's up"}]
    (vdir / "utterances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vocab = ["", "Hello!", "Stopping now."]
    soup = DataSoup(DataSoupConfig([DataSourceConfig("synth", str(synth)),
                                    DataSourceConfig("voice", str(vdir), type="voice_commands")]), ARMS, 16,
                    responses=vocab)
    first_voice = len(soup.sources[0])
    s = soup[first_voice]
    assert s["speech_target"] == 1 and not s["action_mask"].any() and s["obs"].audio.shape == (16000,)
    assert soup[first_voice + 1]["speech_target"] == 2 and soup[first_voice + 1]["obs"].audio is None
    assert soup[first_voice + 2]["speech_target"] == 0
    assert soup[0]["speech_target"] == -1
    (vdir / "utterances.jsonl").write_text('{"text": "hi", "audio": "missing.wav"}\n')
    with pytest.raises(DatasetError, match="missing.wav is missing"):
        VoiceCommandSource(str(vdir), ARMS, 16)


def test_norm_stats_per_source_merged_and_cached(tmp_path, synth):
    ramp = ramp_dataset(tmp_path / "ramp", 30, [10])
    soup = DataSoup(DataSoupConfig([DataSourceConfig("synth", str(synth)), DataSourceConfig("ramp", str(ramp))]),
                    ARMS, 4)
    cache = tmp_path / "cache"
    merged, per = norm_stats_for(soup.sources, ARMS, cache_dir=cache)
    assert set(per) == {"synth", "ramp"} and len(list(cache.iterdir())) == 2
    # Independent recomputation: every valid step of every chunk, pooled over both sources.
    targets = []
    for src in soup.sources:
        for k in range(len(src.episodes)):
            actions, _, _ = src.episode_arrays(k)
            n = len(actions)
            targets += [actions[t + i] for t in range(n) for i in range(4) if t + i < n]
    targets = np.array(targets)
    assert np.allclose(merged.action_mean, targets.mean(0), atol=1e-4)
    assert np.allclose(merged.action_std, np.maximum(targets.std(0), 1e-2), atol=1e-4)
    again, _ = norm_stats_for(soup.sources, ARMS, cache_dir=cache)  # from the cache
    assert np.array_equal(again.action_mean, merged.action_mean)
    rel_space = G1ActionSpace("arms_only", representation={"arms": "relative"})
    rel_src = LeRobotSource(str(ramp), rel_space, 4)
    rel, _ = norm_stats_for([rel_src], rel_space, cache_dir=cache)
    assert len(list(cache.iterdir())) == 3  # a different representation is a different key
    assert rel.action_mean[0] == pytest.approx(np.mean([(i + 0.001 * 1000) / 1000 for t in range(10)
                                                        for i in range(4) if t + i < 10]), abs=1e-4)


def test_synthetic_is_deterministic_and_needs_vision_and_language(tmp_path, synth):
    again = generate(tmp_path / "again", SynthConfig(episodes=8, length=30, image_size=64), progress=False)
    a, b = LeRobotDataset(synth), LeRobotDataset(again)
    for ea, eb in zip(a.episodes, b.episodes, strict=True):
        assert np.array_equal(a.columns(ea)["action"], b.columns(eb)["action"])
    big = generate(tmp_path / "big", SynthConfig(episodes=40, length=20, image_size=64), progress=False)
    src = LeRobotSource(str(big), ARMS, 16)
    finals = {}
    for k, ep in enumerate(src.episodes):
        actions, _, _ = src.episode_arrays(k)
        finals.setdefault(ep.tasks[0], []).append(actions[-1])
    # The same instruction leads to different motions depending on where the block is (vision)...
    spread = [np.std(v, axis=0).max() for v in finals.values() if len(v) > 1]
    assert max(spread) > 0.1
    # ...and different instructions lead to different motions (language).
    means = np.array([np.mean(v, axis=0) for v in finals.values()])
    assert np.std(means, axis=0).max() > 0.1


def test_whole_body_synthetic_has_locomotion(tmp_path):
    root = generate(tmp_path / "wb", SynthConfig(mode="whole_body", episodes=12, length=20, image_size=64),
                    progress=False)
    src = LeRobotSource(str(root), G1ActionSpace("whole_body"), 16)
    assert src.dim_available.all()
    walks = [k for k, e in enumerate(src.episodes) if e.tasks[0].startswith("walk to")]
    assert walks, "seed 0 should include a walking episode"
    actions, _, _ = src.episode_arrays(walks[0])
    assert actions[0, src.space.index("vx")] == pytest.approx(0.3)


# ------------------------------------------------------------------------------------------ malformed


def test_missing_info_json(tmp_path, synth):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    (bad / "meta" / "info.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/info.json is missing; is .*bad a LeRobot dataset"):
        LeRobotSource(str(bad), ARMS, 16)


def test_missing_video_file(tmp_path, synth):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    video = next((bad / "videos").rglob("*.mp4"))
    video.unlink()
    with pytest.raises(DatasetError, match=rf"{video.name}: video file for episode 0, camera "
                                           r"'observation.images.head_camera' is missing"):
        LeRobotSource(str(bad), ARMS, 16)


def test_feature_shape_mismatch(tmp_path, synth):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    info = json.loads((bad / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [30]
    info["features"]["action"]["names"] = ARMS.names + ["a", "b"]
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    src = LeRobotSource(str(bad), ARMS, 16)
    with pytest.raises(DatasetError, match=r"file-000.parquet: feature 'action' has .* values in 240 rows, "
                                           r"info.json declares shape \[30\]"):
        src.sample(0)


def test_truncated_parquet(tmp_path, synth):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    data = next((bad / "data").rglob("*.parquet"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    src = LeRobotSource(str(bad), ARMS, 16)
    with pytest.raises(DatasetError, match=rf"{data.name}: cannot be read as parquet"):
        src.sample(0)


def test_missing_column_and_bad_episode_rows(tmp_path, synth):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    info = json.loads((bad / "meta" / "info.json").read_text())
    info["features"]["observation.velocity"] = {"dtype": "float32", "shape": [3], "names": None}
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="column 'observation.velocity' declared in info.json is missing"):
        LeRobotSource(str(bad), ARMS, 16).sample(0)


def test_unsupported_version_and_hub_offline(tmp_path, synth):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    info = json.loads((bad / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="codebase_version 'v1.6' is not supported"):
        LeRobotDataset(bad)
    with pytest.raises(DatasetError, match="not in the local Hugging Face cache"):
        LeRobotSource("unitreerobotics/G1_Dex3_ToastedBread_Dataset", ARMS, 16)


def test_av1_refuses_frames_below_64_pixels(tmp_path):
    from neon.data.video import VideoError, encode_video

    with pytest.raises(VideoError, match="at least 64x64"):
        encode_video(tmp_path / "x.mp4", np.zeros((3, 32, 32, 3), np.uint8), 30, "av1")
    encode_video(tmp_path / "y.mp4", np.zeros((3, 32, 32, 3), np.uint8), 30, "h264")  # fine for H.264


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_writes_are_atomic(tmp_path, monkeypatch, version):
    from neon.data.video import VideoWriter

    def boom(*a, **k):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(VideoWriter, "close", boom)  # the last step of every video file
    with pytest.raises(RuntimeError, match="encoder crashed"):
        ramp_dataset(tmp_path / "ds", 30, [5], version=version)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp folder left


def test_neon_data_cli(tmp_path, capsys):
    from neon.data.cli import main

    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--episodes", "3", "--length", "12", "--image-size", "32",
                 "--mode", "whole_body", "--format", "v2.1", "--codec", "h264"]) == 0
    assert "wrote 3 episodes x 12 frames (whole_body, LeRobot v2.1, h264)" in capsys.readouterr().out
    assert main(["synth", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["info", str(out), "--mode", "whole_body"]) == 0
    text = capsys.readouterr().out
    assert "LeRobot v2.1, 3 episodes, 36 frames at 30 fps" in text and "mapped 46 dimension(s)" in text
    soup = tmp_path / "soup.yaml"
    soup.write_text(f"sources:\n  - name: synth\n    path: {out}\n    weight: 2.0\nseed: 3\n")
    assert main(["soup", str(soup), "--mode", "whole_body"]) == 0
    assert "synth" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "neither a dataset folder" in capsys.readouterr().err


def test_v30_with_rolled_over_files_reads_like_a_single_file(tmp_path):
    """Data and video files that roll over by size (as LeRobot writes them): the same samples as one file."""
    cfg = SynthConfig(episodes=8, length=30, image_size=64)
    one = generate(tmp_path / "one", cfg, progress=False)
    many = generate(tmp_path / "many", cfg, progress=False, data_file_mb=0.3, video_file_mb=0.003)
    assert len(list(one.rglob("data/*/*.parquet"))) == 1
    assert len(list(many.rglob("data/*/*.parquet"))) >= 3
    assert len(list((many / "videos" / CAMERA).rglob("*.mp4"))) >= 2
    ds = LeRobotDataset(many)
    assert (ds.info["data_files_size_in_mb"], ds.info["video_files_size_in_mb"]) == (0.3, 0.003)
    assert LeRobotDataset(one).info["data_files_size_in_mb"] == 100.0
    assert any(e.from_index > ds._file_start[e.data_file] for e in ds.episodes)  # an episode mid data file
    assert any(e.videos[CAMERA][1] > 0 and not e.videos[CAMERA][0].endswith("file-000.mp4") for e in ds.episodes)
    a, b = LeRobotSource(str(one), ARMS, 16), LeRobotSource(str(many), ARMS, 16)
    assert len(a) == len(b) == 240
    for i in range(len(a)):
        sa, sb = a.sample(i), b.sample(i)
        assert np.array_equal(sa["actions"], sb["actions"]) and np.array_equal(sa["obs"].state, sb["obs"].state), i
        for field in ("eef", "lidar", "audio"):
            assert np.array_equal(getattr(sa["obs"], field), getattr(sb["obs"], field)), (i, field)
        assert sa["obs"].instruction == sb["obs"].instruction
        diff = np.abs(sa["obs"].image.astype(int) - sb["obs"].image.astype(int)).mean()
        assert diff < 4, (i, diff)  # the same frame (each file is its own lossy AV1 stream)


def test_regenerated_dataset_never_reuses_stale_statistics(tmp_path):
    from neon.data.stats import norm_stats_for

    root = tmp_path / "ds"
    generate(root, SynthConfig(episodes=3, length=20, image_size=64, seed=1), progress=False)
    first, _ = norm_stats_for([LeRobotSource(str(root), ARMS, 16)], ARMS, cache_dir=tmp_path / "stats")
    generate(root, SynthConfig(episodes=3, length=20, image_size=64, seed=2), progress=False, overwrite=True)
    again, _ = norm_stats_for([LeRobotSource(str(root), ARMS, 16)], ARMS, cache_dir=tmp_path / "stats")
    fresh, _ = norm_stats_for([LeRobotSource(str(root), ARMS, 16)], ARMS, cache_dir=tmp_path / "fresh")
    assert not np.allclose(first.action_mean, again.action_mean) and np.allclose(again.action_mean, fresh.action_mean)
