"""Bilevel MELTR steps on allinone_tiny (the official recipe's MELTR, K = 1) lower the primary VTM loss."""
from __future__ import annotations

from _bilevel_common import assert_bilevel_steps_lower_the_primary_loss


def test_bilevel_steps_lower_the_primary_loss():
    assert_bilevel_steps_lower_the_primary_loss("allinone_demo", "retrieval")
