"""The spec README's job management example, then a cancel of a running job."""

import asyncio

from deepexec_sdk import DeepExecAsyncClient


async def job_management_example() -> None:
    async with DeepExecAsyncClient() as client:
        # Submit a job
        job_response = await client.submit_job(
            name="my_analysis_job",
            job_type="code_execution",
            data={
                "code": (
                    "import time\n"
                    "for i in range(1, 5):\n"
                    "    time.sleep(0.3)\n"
                    "    print(f'##deepexec-progress {i * 25}', flush=True)\n"
                    "print('Analyzing data...')"
                ),
                "language": "python",
            },
        )

        job_id = job_response.job_id
        print(f"Job submitted with ID: {job_id}")

        # Check job status
        status = await client.get_job_status(job_id)
        print(f"Job status: {status.status}")

        # Wait for job completion
        while status.status not in ["COMPLETED", "FAILED", "CANCELED"]:
            await asyncio.sleep(0.25)
            status = await client.get_job_status(job_id)
            print(f"Job status: {status.status}, Progress: {status.progress}%")

        # Get results if job completed successfully
        if status.status == "COMPLETED":
            print(f"Job result: {status.result}")
        else:
            print(f"Job failed: {status.error}")

        # Cancel a job (here: a long one, right after it starts)
        long_job = await client.execute_code_job("import time; time.sleep(60)", "python")
        await asyncio.sleep(0.5)
        cancel_response = await client.cancel_job(long_job.job_id, reason="No longer needed")
        print(f"Job canceled at: {cancel_response.canceled_at}")
        final = await client.get_job_status(long_job.job_id)
        print(f"Canceled job status: {final.status} ({final.cancel_reason})")


asyncio.run(job_management_example())
