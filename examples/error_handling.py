"""The spec README's error handling example, run on a program that fails."""

import asyncio

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.exceptions import (
    MCPAuthError,
    MCPConnectionError,
    MCPExecutionError,
    MCPProtocolError,
    MCPTimeoutError,
)


async def main() -> None:
    async with DeepExecAsyncClient() as client:
        for code in (
            "print('Hello, World!')",
            "import sys\nprint('oops')\nsys.exit(3)",
            "import time\ntime.sleep(5)",
        ):
            try:
                result = await client.execute_code_and_wait(code=code, language="python", timeout=1)
                print(f"Output: {result.output}")
                print(f"Exit code: {result.exit_code}")
                print(f"Execution time: {result.execution_time} ms")
            except MCPExecutionError as error:
                print(f"Execution failed with exit code {error.exit_code}")
                print(f"Output: {error.output}")
            except MCPTimeoutError as error:
                print(f"Operation timed out after {error.timeout} seconds")
            except MCPConnectionError as error:
                print(f"Connection error: {error}")
            except MCPAuthError as error:
                print(f"Authentication error: {error}")
            except MCPProtocolError as error:
                print(f"Protocol error: {error}")
            except Exception as error:
                print(f"Unexpected error: {error}")


asyncio.run(main())
