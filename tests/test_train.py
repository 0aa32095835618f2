"""The demo CLI `python -m scangraph.train` end to end on a small synthetic Planetoid-format file
(every model, a few epochs), and the data helpers it relies on."""
import json

import pytest
import torch

from scangraph import datasets, train


@pytest.fixture(scope="module")
def sbm_file(tmp_path_factory):
    # Features far apart relative to their noise: a few epochs are enough to learn them.
    data = datasets.stochastic_block_model(num_nodes=80, num_classes=3, num_features=12, feature_noise=0.3,
                                           p_in=0.15, p_out=0.01, seed=3)
    path = tmp_path_factory.mktemp("data") / "sbm.npz"
    datasets.save_planetoid(str(path), data)
    return str(path), data


def test_planetoid_round_trip(sbm_file):
    path, data = sbm_file
    loaded = datasets.load_planetoid(path, normalize_features=False)
    for a, b in zip(loaded, data):
        torch.testing.assert_close(a, b)
    assert loaded.num_classes == 3


@pytest.mark.parametrize("model", ["gcn", "qgcn", "gat", "dagnn", "graphmamba"])
def test_node_classification_cli(sbm_file, model, tmp_path, capsys):
    path, _ = sbm_file
    out = tmp_path / "result.json"
    small = ["--hidden", "16", "--dropout", "0.2"] if model in ("dagnn", "graphmamba") else []
    summary = train.main(["--model", model, "--data", path, "--epochs", "20", "--seeds", "1",
                          "--no-progress", "--json", str(out), "--lr", "0.02"] + small)
    assert "test accuracy at best validation" in capsys.readouterr().out
    assert json.loads(out.read_text())["mean"] == summary["mean"]
    assert summary["mean"] > 60, summary  # three well-separated classes: far above chance (33%)
    if model == "qgcn":  # evaluated after conversion to the integer kernels, QAT numbers kept
        assert summary["qat_mean"] > 60 and "qat_test_acc" in summary["runs"][0]


def test_link_prediction_cli(sbm_file, capsys):
    path, _ = sbm_file
    summary = train.main(["--model", "ncn", "--data", path, "--epochs", "2", "--seeds", "1", "--no-progress"])
    assert 0.0 <= summary["mean"] <= 100.0 and "Hits@100" in capsys.readouterr().out


def test_negative_pairs_avoid_training_edges_and_loops():
    train_pos = torch.tensor([[0, 1, 2], [1, 2, 3]])
    pairs = train._negative_pairs(train_pos, 5, 200)
    assert pairs.shape == (2, 200) and bool((pairs[0] != pairs[1]).all())
    edges = {(0, 1), (1, 2), (2, 3)}
    assert not any((a, b) in edges or (b, a) in edges for a, b in pairs.t().tolist())


def test_hits_at_k():
    assert train.hits_at_k(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0, -1.0]), 1) == 0.5
    assert train.hits_at_k(torch.tensor([3.0]), torch.tensor([2.0]), 100) == 1.0  # fewer negatives than K


def test_link_split_is_disjoint():
    edge_index, n = datasets.karate()
    split = datasets.link_split(edge_index, n, seed=0)
    key = lambda pairs: set((pairs[0] * n + pairs[1]).tolist())  # noqa: E731
    parts = [key(split.train_pos), key(split.val_pos), key(split.test_pos)]
    assert sum(map(len, parts)) == 78 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert not key(split.test_neg) & key(torch.sort(edge_index, 0).values)


def test_copy_task_layout():
    inputs, targets = datasets.copy_task(5, num_tokens=4, delay=2, vocab_size=6)
    assert inputs.shape == targets.shape == (5, 10)
    assert torch.equal(targets[:, -4:], inputs[:, :4]) and bool((inputs[:, 6] == 7).all())
    assert bool((targets[:, :6] == -100).all())
