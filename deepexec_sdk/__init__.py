"""DeepExec SDK: run untrusted code in a sandbox and generate text with DeepSeek (or any
OpenAI-compatible model) through the DeepExec MCP protocol.

    from deepexec_sdk import DeepExecClient

    with DeepExecClient() as client:
        result = client.execute_code_and_wait("print('Hello, World!')", "python")
        print(result.output)
"""

__version__ = "0.1.0"

from deepexec_protocol import PROTOCOL_VERSION  # noqa: E402
from deepexec_protocol.models import (  # noqa: E402
    CodeExecutionResult,
    HealthInfo,
    JobCanceled,
    JobEvent,
    JobOutputEvent,
    JobProgressEvent,
    JobResultEvent,
    JobState,
    JobStatus,
    JobStatusEvent,
    JobSubmitted,
    JobType,
    LanguageInfo,
    SessionInfo,
    StreamError,
    TextGenerationChunk,
    TextGenerationResult,
    Usage,
)

from . import exceptions  # noqa: E402
from ._client import AsyncSession, DeepExecAsyncClient  # noqa: E402
from ._config import ClientConfig  # noqa: E402
from ._streams import ExecutionStream, TextStream  # noqa: E402
from ._sync_client import (  # noqa: E402
    DeepExecClient,
    Session,
    SyncExecutionStream,
    SyncTextStream,
)
from .exceptions import MCPError  # noqa: E402

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncSession",
    "ClientConfig",
    "CodeExecutionResult",
    "DeepExecAsyncClient",
    "DeepExecClient",
    "ExecutionStream",
    "HealthInfo",
    "JobCanceled",
    "JobEvent",
    "JobOutputEvent",
    "JobProgressEvent",
    "JobResultEvent",
    "JobState",
    "JobStatus",
    "JobStatusEvent",
    "JobSubmitted",
    "JobType",
    "LanguageInfo",
    "MCPError",
    "Session",
    "SessionInfo",
    "StreamError",
    "SyncExecutionStream",
    "SyncTextStream",
    "TextGenerationChunk",
    "TextGenerationResult",
    "TextStream",
    "Usage",
    "__version__",
    "exceptions",
]
