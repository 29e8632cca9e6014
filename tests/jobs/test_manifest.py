"""The manifest writer: a fixed schema whatever the rows hold, rows streamed in row groups as they
come, and nothing published when a run is aborted."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifest import MANIFEST_COLUMNS, SCHEMA_VERSION, Counts, ManifestWriter, manifest_row, manifest_schema


def _pipeline_row(i: int, status: str) -> dict:
    """A row as the pipeline's last stage hands it to the driver."""
    ok = status == "ok"
    files = {"avatar.safetensors": f"/out/avatars/a{i}/avatar.safetensors", "avatar.ply": f"/out/avatars/a{i}/avatar.ply"} if ok else {}
    seconds = {"decode": 0.1, "track": 1.0, "reconstruct": 2.0, "fit": 3.0, "export": 0.5} if ok else {"decode": 0.01}
    quality = {"fit_psnr": 25.0, "track_mask_iou": 0.9, "track_facing_angle_deg": 5.0} if ok else {}
    return {
        "row_index": i, "id": f"a{i}", "source_uri": f"/photos/{i}.jpg", "status": status, "reason": "" if ok else "no_person",
        "detail": "" if ok else "nobody in the photo", "files": json.dumps(files), "seconds": json.dumps(seconds), "quality": json.dumps(quality),
        "config_digest": "d" * 16, "content_id": "c" * 20, "resumed": False, "started_at": 1.7e9 + i, "finished_at": 1.7e9 + i + 6.6,
    }  # fmt: skip


def _write(path, statuses, row_group_rows=4096) -> Counts:
    counts = Counts()
    with ManifestWriter(str(path), row_group_rows=row_group_rows) as writer:
        for i, status in enumerate(statuses):
            row = manifest_row(_pipeline_row(i, status), "run1")
            writer.write(row)
            counts.add(row)
    return counts


def test_all_ok_and_all_rejected_manifests_concatenate_without_casting(tmp_path):
    _write(tmp_path / "ok.parquet", ["ok"] * 3)
    _write(tmp_path / "rejected.parquet", ["rejected"] * 2)
    ok, rejected = pq.read_table(tmp_path / "ok.parquet"), pq.read_table(tmp_path / "rejected.parquet")
    assert ok.schema == rejected.schema == manifest_schema()
    assert ok.schema.metadata[b"avatar_forge.schema_version"] == str(SCHEMA_VERSION).encode()
    both = pa.concat_tables([ok, rejected])  # no promote_options: the schemas must be identical
    assert both.num_rows == 5 and tuple(both.column_names) == MANIFEST_COLUMNS
    first = both.to_pylist()[0]
    assert dict(first["files"])["avatar.ply"] == "/out/avatars/a0/avatar.ply" and first["avatar_uri"] == "/out/avatars/a0"
    assert first["seconds"] == {"decode": 0.1, "track": 1.0, "reconstruct": 2.0, "synthesize": None, "fit": 3.0, "export": 0.5, "total": 6.6}
    assert dict(first["quality"])["fit_psnr"] == 25.0 and first["psnr"] == 25.0 and first["facing"] == "front"
    assert (first["finished_at"] - first["started_at"]).total_seconds() == pytest.approx(6.6, abs=1e-3)  # ms timestamps
    last = both.to_pylist()[-1]
    assert last["bundle_uri"] is None and dict(last["files"]) == {} and last["seconds"]["total"] == 0.01


def test_rows_are_written_in_row_groups_as_they_come(tmp_path):
    counts = _write(tmp_path / "m.parquet", ["ok", "rejected", "failed", "ok", "rejected"], row_group_rows=2)
    meta = pq.ParquetFile(tmp_path / "m.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
    assert (counts.rows, counts.failed, dict(counts.statuses)) == (5, 1, {"ok": 2, "rejected": 2, "failed": 1})
    assert dict(counts.reasons) == {"rejected:no_person": 2, "failed:no_person": 1}


def test_an_aborted_manifest_publishes_nothing(tmp_path):
    target = tmp_path / "manifest" / "manifest.parquet"
    with pytest.raises(RuntimeError, match="lost"), ManifestWriter(str(target), row_group_rows=1) as writer:
        writer.write(manifest_row(_pipeline_row(0, "ok"), "run1"))
        raise RuntimeError("lost the cluster")
    assert list(target.parent.iterdir()) == []
    _write(target, ["ok"])
    assert pq.read_table(target).num_rows == 1 and [p.name for p in target.parent.iterdir()] == ["manifest.parquet"]


def test_decode_isolates_rows_and_keeps_broken_exif_photos(tmp_path, monkeypatch):
    """One row's surprise fails that row only; a photo with broken EXIF goes on, with a note."""
    import numpy as np

    import jobs.stages as stages
    from avatar_ops.stages.config import PipelineConfig
    from tests.inputs import broken_exif_photo, png_bytes

    good, exif, cursed = tmp_path / "good.png", tmp_path / "exif.jpg", tmp_path / "cursed.png"
    good.write_bytes(png_bytes(np.full((200, 160, 3), 120, np.uint8)))
    exif.write_bytes(broken_exif_photo("JPEG"))
    cursed.write_bytes(good.read_bytes() + b"\0")
    real = stages.decoded_payload

    def decoded_payload(source, *args, **kwargs):
        if source.endswith("cursed.png"):
            raise RuntimeError("a decoder bug\nwith a second line")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(stages, "decoded_payload", decoded_payload)
    uris = [str(good), str(exif), str(cursed)]
    batch = {"row_index": np.arange(3), "id": np.array(["", "", ""], dtype=object), "source_uri": np.array(uris, dtype=object), "options": np.array(["{}"] * 3, dtype=object)}
    out = stages.to_rows(stages.decode_batch(batch, PipelineConfig().model_dump_json(), str(tmp_path / "out")))
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r for r in out}
    assert by_name["good.png"]["status"] == "pending" and by_name["good.png"]["detail"] == ""
    assert by_name["exif.jpg"]["status"] == "pending" and "EXIF orientation not applied" in by_name["exif.jpg"]["detail"]
    cursed_row = by_name["cursed.png"]
    assert (cursed_row["status"], cursed_row["reason"]) == ("failed", "exception")
    assert cursed_row["detail"] == "decode: RuntimeError: a decoder bug" and cursed_row["finished_at"] >= cursed_row["started_at"]
