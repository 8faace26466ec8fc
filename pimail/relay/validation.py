"""Judging a received envelope (PROTOCOL.md §3.6) with status-go's outcomes, for shh and waku alike.
Sans-I/O.

Time errors (from the future, very old) keep the peer and are reported in the Message Response;
every other error disconnects the peer (0x10). Expired-but-recent envelopes are dropped silently.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pimail.envelope.bloom import bloom_matches
from pimail.envelope.codec import Envelope
from pimail.envelope.pow import PowFormula, pow_meets
from pimail.relay.confirmations import ErrorCodes

VERY_OLD_S = 20  # geth: Expiry + 20 < now is an error, younger expired envelopes are just dropped
DEFAULT_SYNC_ALLOWANCE_S = 10  # geth DefaultSyncAllowance


class Outcome(enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"  # expired a moment ago: ignore without complaint
    TIME_ERROR = "time"  # reported, peer kept
    ERROR = "error"  # reported, peer disconnected


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""

    def code(self, codes: ErrorCodes) -> int:
        """The Message Response code for this verdict in the protocol whose ``codes`` are given."""
        return codes.time_not_synced if self.outcome is Outcome.TIME_ERROR else codes.other


ACCEPTED = Verdict(Outcome.ACCEPT)


@dataclass(frozen=True)
class Rules:
    """What this node requires of incoming envelopes."""

    min_pow: float
    formula: PowFormula = PowFormula.EITHER
    max_size: int = 1024 * 1024
    future_allowance_s: int = DEFAULT_SYNC_ALLOWANCE_S
    pow_tolerance: float | None = None  # the previous requirement, honoured briefly after a change
    bloom: bytes | None = None  # None or full = accept every topic
    bloom_tolerance: bytes | None = None


def judge(env: Envelope, rules: Rules, now: int | None) -> Verdict:
    """Validate one envelope. ``now`` None means the wall clock is not trusted: skip time rules."""
    diff = 0
    if now is not None:
        sent = env.sent
        if sent > now:
            if sent - rules.future_allowance_s > now:
                return Verdict(Outcome.TIME_ERROR, f"envelope created in the future ({sent - now} s ahead)")
            diff = sent - now + 1
        if env.expiry < now:
            if env.expiry + VERY_OLD_S < now:
                return Verdict(Outcome.TIME_ERROR, f"very old envelope (expired {now - env.expiry} s ago)")
            return Verdict(Outcome.DROP, "expired")
    if env.size > rules.max_size:
        return Verdict(Outcome.ERROR, f"oversized envelope ({env.size} > {rules.max_size} bytes)")
    # meets() stops at the first formula that decides (one hash when the current formula passes,
    # as it does for status-go's envelopes, instead of always the three of both formulas); an
    # envelope below the requirement gets the pair once, for the tolerance and the error message
    if rules.min_pow > 0 and not env.meets(rules.min_pow, rules.formula, diff):
        pows = env.pows(diff)
        if rules.pow_tolerance is None or not pow_meets(pows, rules.pow_tolerance, rules.formula):
            return Verdict(
                Outcome.ERROR,
                f"envelope with low PoW (legacy {pows[0]:.3g}, current {pows[1]:.3g}, "
                f"required {rules.min_pow:g} by {rules.formula.value} formula)",
            )
    if (
        rules.bloom is not None
        and not bloom_matches(rules.bloom, env.bloom)
        and (rules.bloom_tolerance is None or not bloom_matches(rules.bloom_tolerance, env.bloom))
    ):
        return Verdict(Outcome.ERROR, "envelope does not match our bloom filter")
    return ACCEPTED
