"""Queue and task names, shared by the app, the tasks and anything that sends them."""

from typing import Final

SUBMIT_QUEUE: Final = "kontext.submit"
POLL_QUEUE: Final = "kontext.poll"
ALL_QUEUES: Final = (SUBMIT_QUEUE, POLL_QUEUE)

SUBMIT_TASK: Final = "kontext.submit"
POLL_TASK: Final = "kontext.poll"
