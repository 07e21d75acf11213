import re

import pytest

from recsys_spark import config


def test_defaults_load_and_local_yaml_is_valid(tmp_path, monkeypatch):
    cfg = config.load("conf/local.yaml")
    assert cfg.train.num_proc == 2
    assert cfg.paths.root.endswith("data/local") and cfg.paths.root.startswith("/")


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(config.ConfigError, match=r"train\.epochz"):
        config.load(p)


def test_unknown_section_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(config.ConfigError, match="trian"):
        config.load(p)


@pytest.mark.parametrize("text,key", [
    ("train:\n  epochs: three\n", "train.epochs"),
    ("train:\n  lr: fast\n", "train.lr"),
    ("train:\n  use_profile: 1\n", "train.use_profile"),
    ("features:\n  event_weights: {view: heavy}\n", "features.event_weights.view"),
    ("evaluate:\n  ks: 10\n", "evaluate.ks"),
])
def test_wrong_type_is_an_error_naming_the_key(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.load(p)


def test_overrides_are_typed_and_applied():
    cfg = config.load(None, ["train.epochs=3", "features.event_weights={view: 2, purchase: 9}", "spark.master=local[1]"])
    assert cfg.train.epochs == 3
    assert cfg.features.event_weights == {"view": 2.0, "purchase": 9.0}
    assert cfg.spark.master == "local[1]"
    with pytest.raises(config.ConfigError, match="train.epochs"):
        config.load(None, ["train.epochs=many"])
    with pytest.raises(config.ConfigError, match="KEY=VALUE"):
        config.load(None, ["train.epochs"])


def test_value_checks():
    with pytest.raises(config.ConfigError, match="time_cutoff"):
        config.load(None, ["features.split=time"])
    with pytest.raises(config.ConfigError, match="features.split"):
        config.load(None, ["features.split=random"])
    with pytest.raises(config.ConfigError, match="train.lr_schedule: must be one of constant, linear"):
        config.load(None, ["train.lr_schedule=cosine"])
    with pytest.raises(config.ConfigError, match="train.block: must be one of transformer, gated, got 'lstm'"):
        config.load(None, ["train.block=lstm"])
    with pytest.raises(config.ConfigError, match="divisible"):
        config.load(None, ["train.d_model=10", "train.n_heads=3"])
    with pytest.raises(config.ConfigError, match="train.dropout: expected a number in \\[0, 1\\) or 'auto'"):
        config.load(None, ["train.dropout=high"])
    with pytest.raises(config.ConfigError, match="train.dropout: must be in"):
        config.load(None, ["train.dropout=1.0"])
    with pytest.raises(config.ConfigError, match="train.min_steps: must be >= 0"):
        config.load(None, ["train.min_steps=-1"])
    with pytest.raises(config.ConfigError, match="train.loss_negatives: must be 0 .* or 'auto'"):
        config.load(None, ["train.loss_negatives=-5"])
    with pytest.raises(config.ConfigError, match="train.loss_negatives: must be 0 .* got 'some'"):
        config.load(None, ["train.loss_negatives=some"])
    with pytest.raises(config.ConfigError, match="train.max_step_logits: must be >= 1"):
        config.load(None, ["train.max_step_logits=0"])
    with pytest.raises(config.ConfigError, match="train.loss_positions: must be 0 \\(every position\\)"):
        config.load(None, ["train.loss_positions=-1"])
    with pytest.raises(config.ConfigError, match="train.adversarial_eps: must be between 0"):
        config.load(None, ["train.adversarial_eps=1.5"])
    with pytest.raises(config.ConfigError, match="train.lr_plateau_factor: must be in \\(0, 1\\]"):
        config.load(None, ["train.lr_plateau_factor=0"])
    with pytest.raises(config.ConfigError, match="train.relative_patience: must be in \\[0, 1\\]"):
        config.load(None, ["train.relative_patience=2"])
    with pytest.raises(config.ConfigError, match="train.lr_plateau_evals: must be >= 1"):
        config.load(None, ["train.lr_plateau_evals=0"])
    with pytest.raises(config.ConfigError, match="train.collaborative: .* train.valid_users is 0"):
        config.load(None, ["train.collaborative=true", "train.valid_users=0"])
    with pytest.raises(config.ConfigError, match="train.final_pass_epochs: .* train.valid_users is 0"):
        config.load(None, ["train.final_pass_epochs=1", "train.valid_users=0"])
    with pytest.raises(config.ConfigError, match="train.final_pass_targets: must be one of window, new, got 'all'"):
        config.load(None, ["train.final_pass_targets=all"])
    with pytest.raises(config.ConfigError, match="train.final_pass_epochs: must be >= 0"):
        config.load(None, ["train.final_pass_epochs=-1"])
    with pytest.raises(config.ConfigError, match="regParams > 0"):
        config.load(None, ["evaluate.als_reg_params=[0.0, 0.1]"])
    assert config.load(None, ["train.dropout=auto"]).train.dropout == "auto"
    assert config.load(None, ["train.dropout=0.25"]).train.dropout == 0.25


@pytest.mark.parametrize("override,message", [
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size: must be >= 1"),
    ("train.lr=-1", "train.lr: must be > 0"),
    ("train.lr=.nan", "train.lr: must be a finite number"),
    ("train.n_heads=0", "train.n_heads: must be >= 1"),
    ("train.time_budget_s=.inf", "train.time_budget_s: must be a finite number"),
    ("features.event_weights={view: .nan}", "features.event_weights: must be a finite number"),
    ("features.event_weights={view: -1.0}", "features.event_weights: weights must be >= 0"),
    ("features.sequence_event_types=[]", "features.sequence_event_types: must name at least one"),
    ("ingest.event_types=[]", "ingest.event_types: must name at least one"),
    ("evaluate.ks=[0]", "evaluate.ks: cut-offs must be >= 1"),
    ("train.launcher=mpi", "train.launcher: must be one of horovod, torch_distributor, got 'mpi'"),
    ("train.resume=always", "train.resume: must be one of auto, off"),
    ("score.objective=profit", "score.objective: must be one of relevance, expected_revenue, expected_margin"),
    ("audience.max_per_user=-1", "audience.max_per_user: must be >= 0"),
    ("abtest.sim_variants=[]", "abtest.sim_variants: one or more of popularity, relevance"),
    ("abtest.sim_variants=[relevance, profit]", "abtest.sim_variants: one or more of popularity, relevance"),
    ("ope.policies=[greedy]", "ope.policies: one or more of popularity, relevance"),
    ("score.explore_slots=11", "score.explore_slots: must be in [0, score.k=10], got 11"),
])
def test_absurd_values_are_refused_naming_the_key(override, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(None, [override])


def test_exploration_needs_a_pool_larger_than_its_slots_and_no_new_item_slots():
    with pytest.raises(config.ConfigError, match=r"score.explore_pool: must be larger than score.explore_slots \(3\)"):
        config.load(None, ["score.explore_slots=3", "score.explore_pool=3"])
    with pytest.raises(config.ConfigError, match="score.explore_slots and score.new_item_slots cannot both be on"):
        config.load(None, ["score.explore_slots=3", "score.new_item_slots=1"])
    assert config.load(None, ["score.explore_slots=3", "score.explore_pool=4"]).score.explore_pool == 4


def test_serving_with_the_bandit_refuses_rules_that_would_fill_its_lists_for_it():
    with pytest.raises(config.ConfigError, match="bandit.serve .* needs score.mode: full, score.explore_slots: 0; "):
        config.load(None, ["bandit.serve=true", "score.mode=incremental", "score.explore_slots=2"])
    with pytest.raises(config.ConfigError, match="bandit.reward_days: must be >= 1"):
        config.load(None, ["bandit.serve=true", "bandit.reward_days=0"])
    assert config.load(None, ["bandit.serve=true", "score.max_per_category=2"]).bandit.serve


def test_yaml_on_and_off_reach_string_settings_as_written():
    # YAML 1.1 reads `off` as false; string settings that offer off/on get the word back.
    cfg = config.load(None, ["train.resume=off", "spark.progress=on"])
    assert cfg.train.resume == "off" and cfg.spark.progress == "on"


def test_auto_dropout_follows_the_training_history_length():
    # 0.4 up to 20 items, 0.1 from 200, log-linear between, rounded to 0.05:
    # 63 items: x = ln(63/20) / ln(10) = 0.498 -> 0.4 - 0.3 * 0.498 = 0.2505 -> 0.25
    # 100 items: x = ln(5) / ln(10) = 0.699 -> 0.190 -> 0.2
    assert [config.auto_dropout(n) for n in (0, 10, 20, 63, 100, 200, 1000)] == [0.4, 0.4, 0.4, 0.25, 0.2, 0.1, 0.1]


def test_auto_final_pass_runs_one_pass_for_short_histories_only():
    # Beauty's 80th percentile is 8 items (a pass gained), MovieLens 1M's 251 (a pass lost).
    assert [config.auto_final_pass_epochs(n) for n in (0, 8, 20, 21, 63, 251)] == [1, 1, 1, 0, 0, 0]
    assert config.load(None, ["train.final_pass_epochs=auto"]).train.final_pass_epochs == "auto"
    with pytest.raises(config.ConfigError, match="train.final_pass_epochs: must be >= 0 .* or 'auto' .*got 'once'"):
        config.load(None, ["train.final_pass_epochs=once"])
    with pytest.raises(config.ConfigError, match="train.final_pass_epochs: .* train.valid_users is 0"):
        config.load(None, ["train.final_pass_epochs=auto", "train.valid_users=0"])


def test_large_catalogs_get_as_many_sampled_negatives_as_a_step_has_room_for():
    bound = config.load(None, []).train.max_step_logits
    assert config.load(None, []).train.loss_negatives == "auto" and bound == 2 * 10 ** 8
    # The full catalog where the step fits: ml-1m (128 x 200 x 3,417), Beauty (128 x 50 x 12,102).
    assert config.auto_negatives(128, 200, 3417, bound) == 0 and config.auto_negatives(128, 50, 12102, bound) == 0
    # MovieLens 25M's 59,048 items at 128 x 200: 2 x 10^8 // 25,600 positions = 7,812 negatives.
    assert config.auto_negatives(128, 200, 59048, bound) == 7812
    # Just over the bound: nearly the whole catalog; never more negatives than other items.
    assert config.auto_negatives(10, 10, 1001, 10 ** 5) == 1000
    # Very long windows: fewer negatives, the step still within the bound.
    assert config.auto_negatives(128, 5000, 10 ** 6, bound) == 312
    assert config.load(None, ["train.loss_negatives=0"]).train.loss_negatives == 0


def test_small_data_gets_smaller_batches_so_an_epoch_has_the_steps_asked_for():
    tc = config.load(None, ["train.batch_size=128", "train.num_proc=2", "train.min_steps_per_epoch=16"]).train
    steps = lambda n_rows: -(-n_rows // (config.epoch_batch_size(n_rows, tc) * tc.num_proc))
    # ml-latest-small's 931 windows: 4 steps an epoch at 128, 17 at 29.
    assert config.epoch_batch_size(931, tc) == 29 and steps(931) == 17
    # ml-1m's 8,700 windows already make 34 steps: the batch stays.
    assert config.epoch_batch_size(8700, tc) == 128 and steps(8700) == 34
    assert config.epoch_batch_size(100, tc) == config.MIN_BATCH  # never below a useful batch
    off = config.load(None, ["train.batch_size=128"]).train
    assert off.min_steps_per_epoch == 0 and config.epoch_batch_size(931, off) == 128
    with pytest.raises(config.ConfigError, match="train.min_steps_per_epoch: must be >= 0"):
        config.load(None, ["train.min_steps_per_epoch=-1"])


def test_missing_file_says_what_to_do():
    with pytest.raises(config.ConfigError, match="not found"):
        config.load("conf/nope.yaml")


def test_round_trip_through_dict():
    cfg = config.load(None, ["train.epochs=4"])
    assert config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["local.yaml", "bench.yaml", "cluster.yaml", "cluster-gpu.yaml", "nba.yaml"])
def test_shipped_profiles_are_valid(name):
    cfg = config.load(f"conf/{name}")
    assert cfg.train.num_proc >= 1


@pytest.mark.parametrize("root", ["s3://bucket/recsys", "dbfs:/recsys", "abfss://c@acct.dfs.core.windows.net/r"])
def test_a_uri_root_keeps_tables_there_and_refuses_file_outputs(root):
    cfg = config.from_dict({"paths": {"root": root}})
    assert cfg.tables_root == f"{root}/tables"
    for name in ("models_dir", "reports_dir"):
        with pytest.raises(config.ConfigError, match=r"paths.root is .*need a filesystem path.*/dbfs/"):
            getattr(cfg, name)


def test_a_file_uri_root_writes_files_under_its_path():
    cfg = config.from_dict({"paths": {"root": "file:///tmp/recsys"}})
    assert (cfg.models_dir, cfg.reports_dir) == ("/tmp/recsys/models", "/tmp/recsys/reports")
