"""The scores in lm-evaluation-harness's results schema (sorsa_repro/evaluation/lm_eval_format.py)."""

from __future__ import annotations

import math

import pytest

from sorsa_repro.evaluation.lm_eval_format import lm_eval_results, stderr


def test_lm_eval_schema_of_a_result():
    result = {
        "eval": {
            "gsm8k": {
                "n": 50,
                "limit": 50,
                "max_new_tokens": 256,
                "generation_protocol": "sorsa-v1",
                "stop": [],
                "backend": "vllm",
                "model": "merged",
                "scores": {
                    "metamath": {
                        "version": "v1",
                        "strict": 0.1,
                        "flexible": 0.2,
                        "n_strict": 5,
                        "n_flexible": 10,
                    },
                    "numeric": {
                        "version": "v2",
                        "strict": 0.12,
                        "flexible": 0.2,
                        "n_strict": 6,
                        "n_flexible": 10,
                    },
                },
            }
        },
        "provenance": {"git_commit": "0123456789abcdef"},
    }
    lm = lm_eval_results(result)
    gsm8k = lm["results"]["gsm8k"]
    assert gsm8k["exact_match,strict-match"] == 0.1  # the paper's grader (metamath) is exact_match
    assert gsm8k["exact_match_stderr,strict-match"] == pytest.approx(math.sqrt(0.1 * 0.9 / 49))
    assert gsm8k["exact_match_numeric,strict-match"] == 0.12
    assert lm["n-samples"]["gsm8k"] == {"original": 1319, "effective": 50}
    assert lm["configs"]["gsm8k"]["dataset_path"] == "openai/gsm8k" and lm["git_hash"] == "0123456"
    assert lm["higher_is_better"]["gsm8k"]["exact_match"] is True
    assert stderr(1, 1) == "N/A"
