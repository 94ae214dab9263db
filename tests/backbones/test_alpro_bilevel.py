"""Bilevel MELTR steps on alpro_tiny (K = 1) lower the primary QA loss, with and without PEM."""
from __future__ import annotations

import pytest
from _bilevel_common import assert_bilevel_steps_lower_the_primary_loss


@pytest.mark.parametrize("task", ["qa_oe", "qa_oe_pem"])
def test_bilevel_steps_lower_the_primary_loss(task):
    assert_bilevel_steps_lower_the_primary_loss("alpro_demo", task)
