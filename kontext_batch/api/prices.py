"""What an image costs on each endpoint, in credits (1 credit = $0.01), from BFL's pricing.

The validator prices a manifest with it, and the submit step reserves a row's price against the
run's budget before the POST; the API's own ``cost`` answer settles the reservation.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_COST_CREDITS", "ENDPOINT_COST_CREDITS", "cost_credits_for"]

#: Credits per image. Unknown endpoints cost what the API says; until it says, :data:`DEFAULT_COST_CREDITS`.
ENDPOINT_COST_CREDITS: Final[dict[str, int]] = {"flux-kontext-pro": 4, "flux-kontext-max": 8}
DEFAULT_COST_CREDITS: Final = 4  # endpoints BFL's pricing does not list: the Kontext pro price


def cost_credits_for(endpoint: str) -> int:
    """Credits one image on ``endpoint`` costs (an estimate for endpoints not in the price table)."""
    return ENDPOINT_COST_CREDITS.get(endpoint, DEFAULT_COST_CREDITS)
