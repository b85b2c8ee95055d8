"""One inference request, its whole life in one place: admission → quota → audit start →
generate → charge → seal the turn(s) → exactly one closing audit event, whatever the
outcome. ``ChatService`` admits and prepares a request; the ``ChatRun`` it returns runs it
and closes it."""

from deepseekd.services.chat.request import Caller, Prepared
from deepseekd.services.chat.run import Accumulated, ChatRun
from deepseekd.services.chat.service import ChatService

__all__ = ["Accumulated", "Caller", "ChatRun", "ChatService", "Prepared"]
