"""The spec README's code execution example (synchronous), with a progress callback."""

from deepexec_sdk import DeepExecClient

with DeepExecClient() as client:
    # Submit a code execution job
    job = client.execute_code_job(
        code="import time\nfor i in range(5):\n    print(f'Step {i}')\n    time.sleep(1)",
        language="python",
        environment={"DEBUG": "true"},
        timeout=30,
    )

    print(f"Code execution job submitted with ID: {job.job_id}")

    # Get the result when ready
    result = client.get_code_execution_result(
        job.job_id, on_progress=lambda p: print(f"  progress {p}%")
    )

    print(f"Output: {result.output}")
    print(f"Exit code: {result.exit_code}")
    print(f"Execution time: {result.execution_time} ms")
    print(f"Memory usage: {result.memory_usage} bytes")

    # Or use the convenience method that handles polling
    result = client.execute_code_and_wait(code="print('Hello, World!')", language="python")
    print(f"Output: {result.output}")
