"""Queue and task names, shared by the app, the tasks and anything that sends them."""

from typing import Final

SUBMIT_QUEUE: Final = "kontext.submit"
POLL_QUEUE: Final = "kontext.poll"
ALL_QUEUES: Final = (SUBMIT_QUEUE, POLL_QUEUE)

SUBMIT_TASK: Final = "kontext.submit"
POLL_TASK: Final = "kontext.poll"


def key_queues(fp: str) -> tuple[str, str]:
    """The submit and poll queues of one API key: only workers that hold the key consume them, so a
    job never runs with another key."""
    return f"{SUBMIT_QUEUE}.{fp}", f"{POLL_QUEUE}.{fp}"
