"""The library API the CLI, scripts and tests share (fercli.api)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fercli import api
from fercli.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_run_pipeline_skips_what_is_up_to_date_and_reports_each_stage(tmp_path):
    config = api.load_config(None, [f"index.root={ROOT / 'sample_data'}",
                                    f"workdir={tmp_path / 'work'}", "split.folds=2"])
    seen = []
    results = api.run_pipeline(config, until="split", after_stage=seen.append)
    assert [r.name for r in results] == [r.name for r in seen] == ["index", "split"]
    assert results[0].n_items == 48 and not results[0].skipped
    states = api.status(config)
    assert [states[n].status for n in ("index", "split", "detect")] == \
        ["up to date", "up to date", "not run"]
    again = api.run_stage("split", config)
    assert again.skipped


def test_unknown_stage_names_fail_in_one_line(tmp_path):
    config = api.load_config(None, [f"workdir={tmp_path}"])
    with pytest.raises(ConfigError, match="not a stage"):
        api.run_pipeline(config, until="trian")
    with pytest.raises(ConfigError, match="not a stage"):
        api.run_stage("trian", config)


def test_worker_policy_lives_in_the_api():
    assert api.default_workers("track") >= 1 and api.default_workers("cv-train") == 1
