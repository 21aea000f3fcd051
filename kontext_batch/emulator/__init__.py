"""An offline FLUX.1 Kontext API: a real HTTP server speaking BFL's and a reseller's dialect.

The project's test double and a product feature (``kontext-batch emulator``): submit, poll on the
host ``polling_url`` names, download signed expiring samples that are real images, with BFL's
limits (24 active per key, of which 6 for max; both configurable, the 24 also per key), credits per
key, webhooks and injectable faults. ``render="fast"`` trades each task's own image for one shared
image per size and format, for load tests. It reads the API's documents itself and imports nothing from
``kontext_batch.api``, so the client's mistakes show up against it.
"""

from kontext_batch.emulator.app import create_app
from kontext_batch.emulator.cli import emulator_command
from kontext_batch.emulator.config import (
    FAULT_KINDS,
    EmulatorConfig,
    LatencySpec,
    parse_fault,
    parse_key_value,
    parse_latency,
    parse_max_active,
)
from kontext_batch.emulator.server import Emulator, run

__all__ = [
    "FAULT_KINDS",
    "Emulator",
    "EmulatorConfig",
    "LatencySpec",
    "create_app",
    "emulator_command",
    "parse_fault",
    "parse_key_value",
    "parse_latency",
    "parse_max_active",
    "run",
]
