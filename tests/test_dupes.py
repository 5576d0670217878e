"""`retrieval dupes`: planted copies found through a real index of real (random-weight) ResNet50 features,
the rules and the keep order on their own, and acting on groups: dry run, moves, the log, the index after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.cli import app as cli
from retrieval.config import Settings
from retrieval.errors import IndexMismatch, UsageError
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.io.changes import CHANGES
from retrieval.maintenance.dupes.groups import Member, Rule, find_groups, order
from retrieval.maintenance.dupes.hashes import hamming, hash_pairs
from retrieval.maintenance.dupes.moves import apply_moves, plan_moves
from retrieval.maintenance.dupes.threshold import RECORD
from retrieval.maintenance.verify import verify

from .test_store import as_written_before_hashes

runner = CliRunner()
ORIGINALS = 3  # photo-0000 … photo-0002 get a resized and a re-encoded copy each


def planted_folder(folder: Path, photos: int = 16) -> list[set[str]]:
    """`photos` generated photos, of which the first ORIGINALS have two copies each: smaller (resized) and,
    at the same size, a smaller file (JPEG quality 30). Returns the planted groups."""
    write_photos(folder, photos, seed=300)
    groups = []
    for i in range(ORIGINALS):
        copies = near_duplicates(photo(300 + i))
        copies["resized"].save(folder / f"small-{i}.jpg", quality=90)
        copies["reencoded"].save(folder / f"lowq-{i}.jpg", quality=90)
        groups.append({f"photo-{i:04d}.jpg", f"small-{i}.jpg", f"lowq-{i}.jpg"})
    return groups


@pytest.fixture
def planted(tmp_path, embedder) -> tuple[Settings, list[set[str]]]:
    folder = tmp_path / "photos"
    groups = planted_folder(folder)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    return settings, groups


def found(store: Store, rule: Rule) -> list[set[str]]:
    return [{m.path for m in g.members} for g in find_groups(store, rule)]


def test_planted_copies_are_grouped_and_unrelated_photos_are_not(planted):
    settings, groups = planted
    store = Store.load(settings.index)
    by_threshold = found(store, Rule(threshold=0.9995))
    by_relative = found(store, Rule(relative=0.1))
    assert sorted(by_threshold, key=sorted) == sorted(groups, key=sorted)
    assert sorted(by_relative, key=sorted) == sorted(groups, key=sorted)


def test_each_group_keeps_the_largest_resolution_then_the_largest_file(planted):
    settings, _ = planted
    groups = find_groups(Store.load(settings.index), Rule(threshold=0.9995))
    assert sorted(g.keep.path for g in groups) == [f"photo-{i:04d}.jpg" for i in range(ORIGINALS)]
    for group in groups:
        assert [m.path.split("-")[0] for m in group.members] == ["photo", "lowq", "small"]
        assert all(0.9995 <= m.score <= 1.0 + 1e-6 for m in group.members)


def test_rule_links_by_threshold_and_by_relative_distance():
    cosines = np.array([0.9999, 0.998, 0.99, 0.98], np.float32)  # reference distance: 0.02
    assert Rule(threshold=0.995).links(cosines).tolist() == [True, True, False, False]
    assert Rule(relative=0.1).links(cosines).tolist() == [True, True, False, False]  # distances <= 0.002
    assert Rule(relative=0.05).links(cosines).tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"relative": 0.0},
        {"relative": 1.0},
        {"relative": float("nan")},
        {"threshold": 0.9, "neighbours": 1},
        {"threshold": 0.9, "relative": 0.3},
    ],
)
def test_a_rule_that_cannot_work_is_refused(arguments):
    with pytest.raises(UsageError):
        Rule(**arguments)


def test_order_follows_the_keep_rules_in_turn_and_puts_missing_files_last():
    def member(path, width, size, mtime):
        return Member(0, path, 1.0, "vectors", width, width, size, mtime)

    big_old, big_new, small = member("a", 100, 10, 1), member("b", 100, 10, 2), member("c", 50, 99, 0)
    gone = Member(0, "d", 1.0, "vectors", None, None, None, None)
    assert [m.path for m in order([gone, small, big_new, big_old])] == ["a", "b", "c", "d"]
    assert [m.path for m in order([big_old, small, big_new], ("size",))] == ["c", "a", "b"]
    assert [m.path for m in order([big_old, small, big_new], ("newest",))] == ["b", "a", "c"]
    with pytest.raises(UsageError, match="unknown rule 'largest'"):
        order([small], ("largest",))
    with pytest.raises(UsageError, match="at least one rule"):
        order([small], ())


def test_dry_run_moves_nothing_and_apply_moves_exactly_the_extras(planted, tmp_path):
    settings, groups = planted
    root = Store.load(settings.index).root
    target = tmp_path / "extras"
    before = Store.load(settings.index)
    args = ["dupes", "--index", str(settings.index), "--threshold", "0.9995", "--move-to", str(target)]

    dry = runner.invoke(cli, args)
    assert dry.exit_code == 0, dry.output
    assert "dry run: 6 files would move" in dry.output
    assert not target.exists() and Store.load(settings.index).generation == before.generation

    applied = runner.invoke(cli, [*args, "--apply", "--json"])
    assert applied.exit_code == 0, applied.output
    extras = {p for g in groups for p in g if not p.startswith("photo-")}
    assert {p.relative_to(target).as_posix() for p in target.glob("*.jpg")} == extras
    assert not any((root / p).exists() for p in extras)
    log = [json.loads(line) for line in (target / "dupes-log.jsonl").read_text().splitlines()]
    assert sorted(entry["source"] for entry in log) == sorted(extras) and all(entry["done"] for entry in log)
    after = Store.load(settings.index)
    assert after.count == before.count - len(extras)
    assert {e.path for e in after.entries()} == {e.path for e in before.entries()} - extras
    health = verify(settings.index)
    assert health.healthy and health.count == after.count


def test_move_to_inside_the_indexed_folder_is_refused(planted):
    settings, _ = planted
    root = Store.load(settings.index).root
    result = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--move-to", str(root / "dupes")])
    assert result.exit_code == 2 and "inside the indexed folder" in result.output


def test_apply_without_move_to_is_a_usage_error(planted):
    settings, _ = planted
    result = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--apply"])
    assert result.exit_code == 2 and "--move-to" in result.output


def test_a_missing_extra_is_not_moved_and_the_rest_are(planted, tmp_path):
    settings, _ = planted
    store = Store.load(settings.index)
    (store.root / "lowq-0.jpg").unlink()
    groups = find_groups(store, Rule(threshold=0.9995))
    moves, after = apply_moves(store, settings.index, plan_moves(groups, store.root, tmp_path / "x"), tmp_path / "x")
    assert [m.source for m in moves if not m.done] == ["lowq-0.jpg"]
    assert next(m for m in moves if not m.done).problem == "file not found"
    assert after.count == store.count - 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threshold", "0.9", "--relative", "0.3"], "--threshold and --relative"),
        (["--relative", "0.3", "--json", "--csv"], "--json and --csv"),
        (["--relative", "0.3", "--keep", ""], "--keep needs at least one rule"),
        (["--relative", "0.3", "--keep", " , "], "--keep needs at least one rule"),
        (["--relative", "0.3", "--keep", "biggest"], "--keep: unknown rule 'biggest'"),
        (["--threshold", "nan"], "finite"),
        (["--relative", "0.3", "--collage-dir", "{file}"], "--collage-dir"),
        (["--threshold", "high"], "a cosine (e.g. 0.95) or auto"),
        (["--threshold", "inf"], "finite"),
        (["--evidence", "pixels"], "--evidence must be one of"),
        (["--evidence", "hash", "--threshold", "0.9"], "not with --evidence hash"),
        (["--evidence", "hash", "--relative", "0.3"], "not with --evidence hash"),
    ],
)
def test_contradictory_or_invalid_flags_exit_2_and_name_the_flag(planted, tmp_path, flags, message):
    """BAD_INPUTS 56: before any search, and nothing written."""
    settings, _ = planted
    (tmp_path / "a-file").write_text("x")
    flags = [f.format(file=tmp_path / "a-file") for f in flags]
    before = Store.load(settings.index).generation
    result = runner.invoke(cli, ["dupes", "--index", str(settings.index), *flags])
    assert result.exit_code == 2 and message in result.output, result.output
    assert Store.load(settings.index).generation == before


def test_a_move_that_fails_part_way_exits_1_logs_every_move_and_leaves_the_index_true_to_the_files(planted, tmp_path):
    """BAD_INPUTS 57: one destination already exists; the other five extras move, the log holds all six (the
    failure with its reason), the exit is 1, and verify finds the index consistent with the folder."""
    settings, _ = planted
    root = Store.load(settings.index).root
    target = tmp_path / "extras"
    target.mkdir()
    (target / "small-1.jpg").write_text("already here")
    args = ["dupes", "--index", str(settings.index), "--relative", "0.1", "--move-to", str(target), "--apply"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "not moved: small-1.jpg" in result.output and "already exists" in result.output
    log = {e["source"]: e for e in map(json.loads, (target / "dupes-log.jsonl").read_text().splitlines())}
    assert len(log) == 6 and sum(e["done"] for e in log.values()) == 5
    assert not log["small-1.jpg"]["done"] and "already exists" in log["small-1.jpg"]["problem"]
    assert (root / "small-1.jpg").exists() and (target / "small-1.jpg").read_text() == "already here"
    paths = {e.path for e in Store.load(settings.index).entries()}
    assert "small-1.jpg" in paths and not {s for s, e in log.items() if e["done"]} & paths
    assert verify(settings.index).healthy


def test_apply_refuses_when_the_index_changed_since_the_groups_were_found(planted, tmp_path, embedder):
    settings, _ = planted
    store = Store.load(settings.index)
    groups = find_groups(store, Rule(threshold=0.9995))
    Image.new("RGB", (64, 48), "red").save(store.root / "new.jpg")
    ingest(store.root, settings, embedder=embedder)
    with pytest.raises(IndexMismatch, match="changed since"):
        apply_moves(store, settings.index, plan_moves(groups, store.root, tmp_path / "x"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_json_csv_and_collages(planted, tmp_path):
    settings, groups = planted
    base = ["dupes", "--index", str(settings.index), "--threshold", "0.9995"]
    as_json = runner.invoke(cli, [*base, "--json"])
    assert as_json.exit_code == 0, as_json.output
    answer = json.loads(as_json.stdout)
    assert sorted(({m["path"] for m in g["members"]} for g in answer["groups"]), key=sorted) == sorted(
        groups, key=sorted
    )
    as_csv = runner.invoke(cli, [*base, "--csv"])
    rows = as_csv.stdout.strip().splitlines()
    assert rows[0].startswith("group,keep,score,evidence,path") and len(rows) == 1 + 3 * len(groups)
    drawn = runner.invoke(cli, [*base, "--collage-dir", str(tmp_path / "collages")])
    assert drawn.exit_code == 0, drawn.output
    assert sorted(p.name for p in (tmp_path / "collages").iterdir()) == [f"group-{n:04d}.jpg" for n in (1, 2, 3)]


@pytest.fixture
def planted_among_40(tmp_path, embedder) -> tuple[Settings, list[set[str]]]:
    """As `planted`, among 40 photos: enough rows to measure a cut-off on (threshold.MIN_ROWS)."""
    folder = tmp_path / "photos"
    groups = planted_folder(folder, photos=40)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    return settings, groups


def test_by_default_the_cut_off_is_measured_on_the_index_recorded_and_finds_exactly_the_planted_groups(
    planted_among_40,
):
    """No flag: the vectors' cut-off is measured (threshold.py) and the hashes join in; the groups are the
    planted ones, by either evidence alone too; the measurement is recorded and read back on the next run."""
    settings, groups = planted_among_40
    planted_groups = sorted(groups, key=sorted)
    runs = {}
    for evidence in ("both", "both", "vectors", "hash"):
        result = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--evidence", evidence, "--json"])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        assert sorted(({m["path"] for m in g["members"]} for g in answer["groups"]), key=sorted) == planted_groups
        assert {link["by"] for g in answer["groups"] for link in g["links"]} <= {"vectors", "hash", "vectors+hash"}
        runs.setdefault(evidence, []).append(answer)
    first, again = runs["both"]
    assert first["measured"]["rows"] == 46 and first["measured"]["copies"] == 46 * len(CHANGES)
    assert 0.0 < first["measured"]["copy_recall"] <= first["measured"]["with_hash"] <= 1.0
    assert not first["measured"]["recorded"] and again["measured"]["recorded"]
    assert again["measured"]["threshold"] == first["measured"]["threshold"] == first["rule"]["threshold"]
    assert runs["hash"][0]["measured"] is None and runs["hash"][0]["rule"]["threshold"] is None
    assert (settings.index / RECORD).is_file()


def changed_folder(folder: Path) -> None:
    """40 generated photos, a 60 % brighter copy of photo 0 and the central 85 % of photo 2, enlarged back."""
    write_photos(folder, 40, seed=300)
    ImageEnhance.Brightness(photo(300)).enhance(1.6).save(folder / "bright-0.jpg", quality=90)
    original = photo(302)
    w, h = original.size
    box = (round(w * 0.075), round(h * 0.075), round(w * 0.925), round(h * 0.925))
    original.crop(box).resize((w, h), Image.Resampling.BILINEAR).save(folder / "crop-2.jpg", quality=90)


def test_the_hash_finds_a_brightened_copy_the_vectors_miss_and_the_vectors_a_crop_the_hash_misses(tmp_path, embedder):
    changed_folder(tmp_path / "photos")
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(tmp_path / "photos", settings, embedder=embedder)
    found = {}
    for evidence in ("vectors", "hash", "both"):
        # the vectors' cut-off given: the measured one is tested above; here, what each evidence finds alone
        cut = [] if evidence == "hash" else ["--threshold", "0.9985"]
        result = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--evidence", evidence, *cut, "--json"])
        assert result.exit_code == 0, result.output
        found[evidence] = sorted(sorted(m["path"] for m in g["members"]) for g in json.loads(result.stdout)["groups"])
    assert found["vectors"] == [["crop-2.jpg", "photo-0002.jpg"]]
    assert found["hash"] == [["bright-0.jpg", "photo-0000.jpg"]]
    assert found["both"] == [["bright-0.jpg", "photo-0000.jpg"], ["crop-2.jpg", "photo-0002.jpg"]]


def test_hashes_are_kept_through_an_incremental_ingest_and_a_move(planted, embedder):
    settings, _ = planted
    before = {e.path: e.phash for e in Store.load(settings.index).entries()}
    assert all(len(phash) == 32 for phash in before.values())
    root = Store.load(settings.index).root
    (root / "photo-0005.jpg").rename(root / "moved-0005.jpg")
    photo(999).save(root / "added.jpg", quality=90)
    report = ingest(root, settings, embedder=embedder)
    assert report.embedded == 1  # only the added file: the moved one is recognised by its bytes
    after = {e.path: e.phash for e in Store.load(settings.index).entries()}
    assert after["moved-0005.jpg"] == before["photo-0005.jpg"]
    assert all(after[path] == phash for path, phash in before.items() if path != "photo-0005.jpg")
    assert len(after["added.jpg"]) == 32 and after["added.jpg"] not in before.values()


def test_an_index_without_hashes_says_how_to_add_them_and_compact_hashes_adds_them_without_embedding(planted):
    settings, groups = planted
    as_written_before_hashes(settings.index)
    by_hash = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--evidence", "hash"])
    assert by_hash.exit_code == 2 and "compact --hashes" in by_hash.output
    default = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--threshold", "0.9995", "--json"])
    assert default.exit_code == 0 and "compact --hashes" in default.stderr
    answer = json.loads(default.stdout)
    assert sorted(({m["path"] for m in g["members"]} for g in answer["groups"]), key=sorted) == sorted(
        groups, key=sorted
    )
    assert {link["by"] for g in answer["groups"] for link in g["links"]} == {"vectors"}
    vectors = Store.load(settings.index).vectors()
    added = runner.invoke(cli, ["compact", "--index", str(settings.index), "--hashes"])
    assert added.exit_code == 0 and f"hashes added to {len(vectors)} rows" in added.output, added.output
    after = Store.load(settings.index)
    assert after.hashed and np.array_equal(after.vectors(), vectors)
    by_hash = runner.invoke(cli, ["dupes", "--index", str(settings.index), "--evidence", "hash", "--json"])
    answer = json.loads(by_hash.stdout)
    assert sorted(({m["path"] for m in g["members"]} for g in answer["groups"]), key=sorted) == sorted(
        groups, key=sorted
    )


def test_an_l2_index_gives_the_same_groups_with_cosine_scores(tmp_path, embedder):
    folder = tmp_path / "photos"
    groups = planted_folder(folder)
    settings = Settings(index=tmp_path / "index", weights="none", metric="l2")
    ingest(folder, settings, embedder=embedder)
    found_groups = find_groups(Store.load(settings.index), Rule(threshold=0.9995))
    assert sorted(({m.path for m in g.members} for g in found_groups), key=sorted) == sorted(groups, key=sorted)
    assert all(0.9995 <= m.score <= 1.0 + 1e-6 for g in found_groups for m in g.members)


def test_a_move_onto_a_full_disk_exits_1_logs_it_leaves_no_half_copy_and_the_index_true(planted, small_filesystem):
    """BAD_INPUTS 57, the disk-full case: the extras go to a 3 MiB file system (another one: copied, not
    linked) with room for about 40 KB; the copies that do not fit fail with the reason in the log, no
    `.partial` file stays, the exit is 1, and verify finds the index consistent with the folder."""
    settings, _ = planted
    root = Store.load(settings.index).root
    target = small_filesystem / "extras"
    target.mkdir()
    filler = small_filesystem / "filler"
    free = shutil.disk_usage(small_filesystem).free
    filler.write_bytes(b"\0" * max(0, free - 40_000))
    args = ["dupes", "--index", str(settings.index), "--relative", "0.1", "--move-to", str(target), "--apply"]
    result = runner.invoke(cli, args)
    log = [json.loads(line) for line in (target / "dupes-log.jsonl").read_text().splitlines()]
    failed = [e for e in log if not e["done"]]
    assert result.exit_code == 1 and failed, (result.output, log)
    assert len(log) == 6 and all("No space left on device" in e["problem"] for e in failed)
    assert not list(target.rglob("*.partial"))
    moved = {e["source"] for e in log if e["done"]}
    assert all((target / p).is_file() and not (root / p).exists() for p in moved)
    assert all((root / e["source"]).is_file() for e in failed)
    assert verify(settings.index).healthy


def test_hash_pairs_by_either_path_are_exactly_the_pairs_brute_force_finds():
    """hashes.py on 3,000 random hashes with 50 planted pairs at each distance 0-8 and a mirrored copy: every
    pair compared, and the slices of the multi-index hashing used above EXACT_BELOW rows, both find exactly the
    pairs brute force finds."""
    rng = np.random.default_rng(0)
    own = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    bits = np.unpackbits(own, axis=1)
    for distance in range(9):
        for k in range(50):
            a, b = 2 * (50 * distance + k), 2 * (50 * distance + k) + 1
            bits[b] = bits[a]
            bits[b, rng.choice(64, distance, replace=False)] ^= 1
    own = np.packbits(bits, axis=1)
    mirrored = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    mirrored[2900] = own[2950]  # 2900's mirror image hashes as 2950 does: a mirrored copy
    hashes = np.concatenate([own, mirrored], axis=1)
    hashes[2999] = 0  # a row without a hash takes no part
    a, b = np.triu_indices(3000, k=1)
    distance = hamming(hashes, a, b)
    truth = {(int(x), int(y)): int(d) for x, y, d in zip(a, b, distance) if 0 <= d <= 8}
    assert hash_pairs(hashes, 8) == truth and truth[(2900, 2950)] == 0 and not any(2999 in p for p in truth)
    assert hash_pairs(hashes, 8, exact_below=0) == truth


def test_with_a_folder_groups_are_found_among_its_files_only(tmp_path, embedder):
    """The same planted set in a/ and b/: the whole index groups each original with its copies in both folders
    (6 files) and every other photo with its twin (2), --folder a each original with its copies in a/ alone (3);
    a folder holding nothing indexed exits 4."""
    for name in ("a", "b"):
        groups = planted_folder(tmp_path / "photos" / name)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(tmp_path / "photos", settings, embedder=embedder)
    args = ["dupes", "--index", str(settings.index), "--threshold", "0.9995", "--json"]
    everywhere = runner.invoke(cli, args)
    within_a = runner.invoke(cli, [*args, "--folder", "a"])
    assert everywhere.exit_code == 0 and within_a.exit_code == 0, (everywhere.output, within_a.output)
    members = [sorted(m["path"] for m in g["members"]) for g in json.loads(within_a.output)["groups"]]
    assert sorted(members) == sorted(sorted(f"a/{p}" for p in g) for g in groups)
    sizes = sorted(len(g["members"]) for g in json.loads(everywhere.output)["groups"])
    assert sizes == [2] * (16 - ORIGINALS) + [6] * ORIGINALS
    nothing = runner.invoke(cli, [*args, "--folder", "c"])
    assert nothing.exit_code == 4 and "no indexed image is in folder c/" in nothing.output, nothing.output
