"""The exceptions the SDK raises: one hierarchy rooted in MCPError.

Every exception carries ``code`` (the protocol error code, or None), ``http_status`` and
``request_id``. The classes come from the generated layer (one per protocol error code,
from the schema's x-error-codes); this module is their public home::

    MCPError
    ├── MCPConnectionError             the server could not be reached / connection broke
    ├── MCPTimeoutError (.timeout)     a client timeout, max_wait_time, execution_timeout
    ├── MCPProtocolError               malformed answer, invalid_request, unsupported_media_type
    │   ├── MCPValidationError (.path) validation_error, bad input caught client-side
    │   │   └── MCPUnsupportedLanguageError
    │   ├── MCPProtocolVersionError
    │   └── MCPPayloadTooLargeError
    ├── MCPAuthError                   authentication_error
    │   └── MCPPermissionError         permission_denied
    ├── MCPNotFoundError               not_found
    ├── MCPConflictError               conflict
    ├── MCPRateLimitError (.retry_after)
    ├── MCPCanceledError               job_canceled
    ├── MCPExecutionError (.exit_code, .output, .result)
    ├── MCPConfigurationError (.source)
    └── MCPServerError                 internal_error
        ├── MCPGenerationError         generation_error
        ├── MCPProviderNotConfiguredError
        └── MCPServiceUnavailableError
"""

from deepexec_protocol.errors import (
    ERROR_CLASSES,
    MCPAuthError,
    MCPCanceledError,
    MCPConfigurationError,
    MCPConflictError,
    MCPConnectionError,
    MCPError,
    MCPExecutionError,
    MCPGenerationError,
    MCPNotFoundError,
    MCPPayloadTooLargeError,
    MCPPermissionError,
    MCPProtocolError,
    MCPProtocolVersionError,
    MCPProviderNotConfiguredError,
    MCPRateLimitError,
    MCPServerError,
    MCPServiceUnavailableError,
    MCPTimeoutError,
    MCPUnsupportedLanguageError,
    MCPValidationError,
    exception_for_code,
)

__all__ = [
    "ERROR_CLASSES",
    "MCPAuthError",
    "MCPCanceledError",
    "MCPConfigurationError",
    "MCPConflictError",
    "MCPConnectionError",
    "MCPError",
    "MCPExecutionError",
    "MCPGenerationError",
    "MCPNotFoundError",
    "MCPPayloadTooLargeError",
    "MCPPermissionError",
    "MCPProtocolError",
    "MCPProtocolVersionError",
    "MCPProviderNotConfiguredError",
    "MCPRateLimitError",
    "MCPServerError",
    "MCPServiceUnavailableError",
    "MCPTimeoutError",
    "MCPUnsupportedLanguageError",
    "MCPValidationError",
    "exception_for_code",
]
