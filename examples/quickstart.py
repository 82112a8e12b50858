"""Quick start: write pydicom's example CT slice (run: python examples/quickstart.py)."""

import anyio
from pydicom import examples

import aiodicom


async def main() -> None:
    ct = examples.ct  # pydicom's bundled CT slice
    await aiodicom.dcmwrite("ct.dcm", ct)  # pydicom.dcmwrite's bytes, published atomically
    try:
        await aiodicom.dcmwrite("ct.dcm", ct, exist_ok=False)  # exclusive create
    except FileExistsError as exc:
        print(f"not overwritten: {exc}")
    async with anyio.create_task_group() as tg:  # ten concurrent writes, one event loop
        for i in range(10):
            tg.start_soon(aiodicom.dcmwrite, f"ct-{i}.dcm", ct)
    print("wrote ct.dcm and ct-0.dcm ... ct-9.dcm")


if __name__ == "__main__":
    anyio.run(main)  # or: trio.run(main)
