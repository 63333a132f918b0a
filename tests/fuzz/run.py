"""Run one fuzz harness under atheris (libFuzzer), coverage-guided over vna's own code.

    python -m tests.fuzz.run HARNESS [libFuzzer flags...] [CORPUS_DIR...]

`tests/test_fuzz.py` and `benchmarks/fuzz.py` run it in a subprocess with
`-max_total_time`; the seed corpus (`seeds`) is written to a fresh folder, next to the
kept inputs of `tests/fuzz/corpus/<harness>/`.
"""

from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path

import atheris

CORPUS = Path(__file__).parent / "corpus"


def seeds(name: str) -> list[bytes]:
    """Well-formed inputs for a harness to start from."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from tests.factory import make_instance

    ds = make_instance()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    dataset = buf.getvalue()
    if name == "part10":
        return [b"\x04" + dataset, b"\x00" + dataset[:400]]
    if name in ("pdu", "storage_loop"):
        from vna.dicom.dimse import pdata_pdus

        def command(field: int, *, store: bool) -> bytes:
            elements = [(0x0000, 0x0002, b"1.2.840.10008.5.1.4.1.1.2\x00" if store
                         else b"1.2.840.10008.1.1\x00"),
                        (0x0000, 0x0100, struct.pack("<H", field)),
                        (0x0000, 0x0110, struct.pack("<H", 1)),
                        (0x0000, 0x0800, struct.pack("<H", 0x0000 if store else 0x0101))]
            if store:
                elements += [(0x0000, 0x0700, struct.pack("<H", 0)),
                             (0x0000, 0x1000, str(ds.SOPInstanceUID).encode() + b"\x00"
                              if len(str(ds.SOPInstanceUID)) % 2 else
                              str(ds.SOPInstanceUID).encode())]
            body = b"".join(struct.pack("<HHI", g, e, len(v)) + v for g, e, v in elements)
            return struct.pack("<HHII", 0, 0, 4, len(body)) + body

        release = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
        echo = pdata_pdus(3, True, command(0x0030, store=False), 16384)
        store = pdata_pdus(1, True, command(0x0001, store=True), 16384) + \
            pdata_pdus(1, False, dataset, 16384)
        return [echo + release, store + release, echo + store + store + release]
    if name == "multipart":
        return [b"\x10--XyZ-boundary\r\nContent-Type: application/json\r\n"
                b"Content-Disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n"
                b"--XyZ-boundary\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n"
                b"--XyZ-boundary--\r\n"]
    if name == "hl7":
        msh = "MSH|^~\\&|RIS|HOSP|VNA|REGION|20261205101010||"
        return [(msh + "ADT^A08|1|P|2.5\rPID|||P1^^^HOSP||Doe^John||19700101|M\r").encode(),
                (msh + "ORM^O01|2|P|2.5\rPID|||P1^^^HOSP\rORC|NW|O1|F1\r"
                 "OBR|1|O1|F1|CT^CT THORAX|||20261205100000\r").encode(),
                (msh + "ORU^R01|3|P|2.5\rPID|||P1\rOBR|1|O1|F1\rOBX|1|TX|||report||||||F\r"
                 ).encode(),
                (msh + "ADT^A40|4|P|2.5\rPID|||P2^^^HOSP\rMRG|P1^^^HOSP\r").encode()]
    if name == "stow":
        part = (b"--XyZ-boundary\r\nContent-Type: application/dicom\r\n\r\n" + b"\x00" * 128
                + b"DICM")
        from pydicom.filewriter import write_file_meta_info

        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, ds.file_meta)
        return [b"\x40" + part + meta.getvalue() + dataset + b"\r\n--XyZ-boundary--\r\n"]
    return []


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    logging.disable(logging.CRITICAL)  # refusals are logged as warnings: not of interest
    with atheris.instrument_imports(include=["vna", "services", "storage", "hl7",
                                             "python_multipart"]):
        import services.dicom_scp.storage_association  # noqa: F401
        import services.multipart  # noqa: F401
        import services.xds_api.dicomweb.stow  # noqa: F401
        import storage.archive  # noqa: F401
        import vna.dicom.attributes  # noqa: F401
        import vna.dicom.dimse  # noqa: F401
        import vna.dicom.part10  # noqa: F401
        import vna.hl7  # noqa: F401
    from tests.fuzz.harnesses import HARNESSES

    atheris.Setup([sys.argv[0], *args], HARNESSES[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
