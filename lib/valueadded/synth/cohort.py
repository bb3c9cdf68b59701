"""The generated England-shaped national cohort, with its ground truth.

`generate_cohort` writes every input table of the contract (valueadded.io.schemas.INPUT_TABLES)
as Parquet, plus the true model behind the outcomes, without Spark:

    out_dir/<table>/part-NNNNN.parquet      schools, trust_membership, pupils, ks2_results,
                                             ks4_results, amendments (Arrow schema = contract)
    out_dir/ground_truth/model.json          true coefficients and variances per outcome model
    out_dir/ground_truth/school_effects.parquet   one row per school per outcome
    out_dir/ground_truth/pupil_truth.parquet      one row per pupil per key stage
    out_dir/manifest.json                    year, seed, scale, files, row counts, version

Schools, trusts and school effects are drawn once; pupils are drawn block by block (a fixed
run of BLOCK_SCHOOLS schools) from generators seeded by (seed, year, block, stream), and each
file takes a contiguous run of blocks. The same (seed, year, scale) therefore gives the same
rows whatever `files` is, and memory stays bounded by a block and a row group.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from valueadded.io.schemas import INPUT_TABLES
from valueadded.synth import attainment as att
from valueadded.synth.amendments import amendments_table
from valueadded.synth.blocks import PUPIL_TRUTH_SCHEMA, CohortContext, generate_block
from valueadded.synth.geography import build_local_authorities
from valueadded.synth.schools import build_schools, schools_table
from valueadded.synth.trusts import build_trusts, trust_membership_table
from valueadded.synth.truth import (
    DERIVED_OUTCOME, TERM_DEFINITIONS, TRUST_SHARE_OF_SCHOOL_VARIANCE, average_model, build_model,
    draw_school_effects,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0.0"
BLOCK_SCHOOLS = 128
ROW_GROUP_ROWS = 200_000
GLOBAL_STREAMS = {"geography": 1001, "schools": 1002, "trusts": 1003, "school_effects": 1004}
PUPIL_TABLES = ("pupils", "ks2_results", "ks4_results")
KS4_PRIOR_SCALE = "ks2_scaled"
FIRST_SCALED_SCORE_YEAR = 2016  # first KS2 tests reported as scaled scores

SCHOOL_EFFECTS_SCHEMA = pa.schema([
    pa.field("school_id", pa.string(), False),
    pa.field("key_stage", pa.string(), False),
    pa.field("outcome", pa.string(), False),
    pa.field("trust_id", pa.string(), True),
    pa.field("school_effect", pa.float64(), False),
    pa.field("trust_effect", pa.float64(), True),
])


def _global_rng(seed: int, year: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, year, GLOBAL_STREAMS[stream]]))


class _PartWriter:
    """Writes one table's part file, buffering block outputs into row groups."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, table: pa.Table | None) -> None:
        if table is None or table.num_rows == 0:
            return
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(pa.concat_tables(self.buffer))
        self.rows += self.buffered
        self.buffer, self.buffered = [], 0

    def close(self) -> int:
        self.flush()
        if self.writer is None:  # a file with no rows still carries the schema
            pq.write_table(self.schema.empty_table(), self.path)
        else:
            self.writer.close()
        return self.rows


def _prepare(out: Path) -> None:
    """Create the output folders and drop part files a previous run may have left."""
    for table in INPUT_TABLES:
        folder = out / table
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):
            stale.unlink()
    (out / "ground_truth").mkdir(parents=True, exist_ok=True)


def _write_single(out: Path, table_name: str, table: pa.Table) -> int:
    pq.write_table(table, out / table_name / "part-00000.parquet")
    return table.num_rows


def _school_effects_table(schools, trusts, effects: dict[str, np.ndarray]) -> pa.Table:
    """One row per school per outcome of its key stage (KS2: reading, maths, their average)."""
    in_trust = trusts.current_trust >= 0
    trust_id = np.where(in_trust, trusts.trust_id[np.maximum(trusts.current_trust, 0)], None)
    parts = []
    ks2 = np.flatnonzero(schools.key_stage == "ks2")
    ks4 = np.flatnonzero(schools.key_stage == "ks4")
    average = {k: (effects[f"ks2_reading{k}"] + effects[f"ks2_maths{k}"]) / 2 for k in ("", "_trust")}
    for outcome, members, total, trust_part in (
        ("ks2_reading", ks2, effects["ks2_reading"], effects["ks2_reading_trust"]),
        ("ks2_maths", ks2, effects["ks2_maths"], effects["ks2_maths_trust"]),
        (DERIVED_OUTCOME, ks2, average[""], average["_trust"]),
        ("ks4_attainment8", ks4, effects["ks4_attainment8"], effects["ks4_attainment8_trust"]),
    ):
        parts.append(pa.table({
            "school_id": schools.school_id[members],
            "key_stage": np.full(len(members), outcome[:3]),
            "outcome": np.full(len(members), outcome),
            "trust_id": pa.array(trust_id[members], pa.string()),
            "school_effect": total[members],
            "trust_effect": pa.array(trust_part[members], pa.float64(), mask=~in_trust[members]),
        }, schema=SCHOOL_EFFECTS_SCHEMA))
    return pa.concat_tables(parts).sort_by([("school_id", "ascending"), ("outcome", "ascending")])


def _model_json(year: int, seed: int, scale: float, era: str, models: dict,
                mean_multiplier_sq: dict[str, float]) -> dict:
    """ground_truth/model.json: the true models and every definition needed to rebuild X."""
    vocabulary, points = att.ks1_vocabulary(era)
    return {
        "generator_version": GENERATOR_VERSION,
        "year": year, "seed": seed, "scale": scale,
        "ks1_era": era,
        "models": {name: model.to_json(mean_multiplier_sq[name]) for name, model in models.items()},
        "definitions": {
            "model": "outcome = sum(coefficient * term) + school_effect + pupil_residual; pupil_residual ~ "
                     "N(0, sigma2_pupil_at_multiplier_1 * m(mu)^2), mu = sum(coefficient * term) + school_effect, "
                     "m piecewise linear (pupil_sd_multiplier_by_conditional_mean, flat beyond the ends; 1 when "
                     "null); sigma2_pupil is its mean over the cohort's pupils with an observed prior; "
                     "school_effect ~ "
                     "N(0, sigma2_school) for every school; for a school in a trust it is the trust effect "
                     f"(variance sigma2_trust = {TRUST_SHARE_OF_SCHOOL_VARIANCE} * sigma2_school, shared by the "
                     "trust's schools) plus the school's own part (sigma2_school - sigma2_trust)",
            "trust_of_school": "the trust whose spell has no leave_date (membership at 31 August of the year)",
            "terms": TERM_DEFINITIONS,
            "ks1_points": dict(zip(vocabulary, points.tolist())),
            "ks2_nominal_scores": {"BLW_pscale": att.NOMINAL_BY_PSCALE, "pre_key_stage_ta": att.NOMINAL_BY_TA,
                                   "N": att.NOMINAL_N_CODE},
            "prior_observed": "KS2 cohort: the pupil has KS1 assessments; KS4: the pupil has a KS2 record with "
                              "S, B or N in both reading and maths. Unobserved priors were replaced by the "
                              "value the pupil would have had (pupil_truth.prior_aps) when generating",
            "outcomes": {
                "ks2_reading": "KS2 reading scaled score before codes, rounding and clipping to 80-120",
                "ks2_maths": "KS2 maths scaled score, likewise",
                DERIVED_OUTCOME: "mean of the reading and maths latents",
                "ks4_attainment8": "Attainment 8 before clipping to 0-90 and rounding to 0.01",
            },
            "pupil_truth": "latent_* are the model outcomes before rounding/clipping; attainment8 is the "
                           "observed A8 = 2*english + 2*maths + ebacc_1..3 + open_1..3 points",
        },
    }


def _context(year: int, seed: int, schools, effects: dict[str, np.ndarray]) -> CohortContext:
    """The true models and per-school pupil numbering that every block shares."""
    era = att.ks1_era(year)
    models = {"ks2_reading": build_model("ks2_reading", era), "ks2_maths": build_model("ks2_maths", era)}
    models[DERIVED_OUTCOME] = average_model(models["ks2_reading"], models["ks2_maths"])
    models["ks4_attainment8"] = build_model("ks4_attainment8", KS4_PRIOR_SCALE)
    first_serial = {}
    for stage in ("ks2", "ks4"):
        sizes = np.where(schools.key_stage == stage, schools.cohort_size, 0)
        first_serial[stage] = np.cumsum(sizes) - sizes + 1
    return CohortContext(year=year, seed=seed, schools=schools, school_effects=effects, models=models,
                         ks1_era=era, first_serial=first_serial)


def _write_pupil_tables(out: Path, ctx: CohortContext, files: int, started: float):
    """Generate the blocks in order and write the pupil-level tables, `files` parts each.

    Part file k takes the contiguous run of blocks [ceil(k*B/files), ceil((k+1)*B/files)).
    Returns (row counts incl. pupil_truth, amendment rows, mean squared pupil SD multiplier per model).
    """
    n_blocks = math.ceil(len(ctx.schools) / BLOCK_SCHOOLS)
    counts = {name: 0 for name in PUPIL_TABLES}
    truth_writer = _PartWriter(out / "ground_truth" / "pupil_truth.parquet", PUPIL_TRUTH_SCHEMA)
    amendment_parts: list[dict[str, list]] = []
    multiplier_sums = {name: [0.0, 0] for name in ctx.models}
    for part in range(files):
        writers = {name: _PartWriter(out / name / f"part-{part:05d}.parquet", INPUT_TABLES[name].arrow_schema())
                   for name in PUPIL_TABLES}
        for block in range(math.ceil(part * n_blocks / files), math.ceil((part + 1) * n_blocks / files)):
            first, stop = block * BLOCK_SCHOOLS, min(len(ctx.schools), (block + 1) * BLOCK_SCHOOLS)
            for rows in generate_block(ctx, block, first, stop):
                writers["pupils"].add(rows.pupils)
                writers[f"{rows.key_stage}_results"].add(rows.results)
                truth_writer.add(rows.pupil_truth)
                amendment_parts.append(rows.amendments)
                for name, (total, pupils) in rows.multiplier_sums.items():
                    multiplier_sums[name][0] += total
                    multiplier_sums[name][1] += pupils
        for name, writer in writers.items():
            counts[name] += writer.close()
        logger.info("wrote part %d of %d (%.1f s)", part + 1, files, time.perf_counter() - started)
    counts["pupil_truth"] = truth_writer.close()
    mean_multiplier_sq = {name: total / pupils if pupils else 1.0 for name, (total, pupils) in multiplier_sums.items()}
    return counts, amendment_parts, mean_multiplier_sq


def generate_cohort(out_dir: str | Path, year: int, seed: int, scale: float = 1.0, files: int = 4) -> dict:
    """Generate an England-shaped national cohort for one academic year, with its ground truth.

    Grain: schools one row per school; trust_membership one row per school per trust spell;
    pupils one row per pupil per key stage (KS2 in primary-phase, KS4 in secondary-phase
    schools); ks2_results / ks4_results one row per pupil of that cohort; amendments one row
    per amendment (~0.5% of pupils). Pupil-level tables are split into `files` part files.

    Args:
        out_dir: Folder to write into (created; stale part files in its table folders removed).
        year: Academic year of the results (2024 = 2023/24), >= 2016. The KS2 cohort's KS1 is
            framework era when year >= 2020, levels era before.
        seed: Random seed. The same (seed, year, scale) gives the same rows for any `files`.
        scale: Multiplies the number of schools and trusts (1.0 ~ England: ~1.27M pupils).
        files: Part files per pupil-level table (>= 1).

    Returns:
        The manifest dict also written to out_dir/manifest.json.
    """
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if year < FIRST_SCALED_SCORE_YEAR:
        raise ValueError(f"year must be >= {FIRST_SCALED_SCORE_YEAR} (KS2 scaled scores), got {year}")
    if year - 5 < FIRST_SCALED_SCORE_YEAR:
        logger.warning("year %s: the KS4 cohort took KS2 before %s; its priors are still generated as "
                       "scaled scores", year, FIRST_SCALED_SCORE_YEAR)
    started = time.perf_counter()
    out = Path(out_dir)
    _prepare(out)
    las = build_local_authorities(scale, _global_rng(seed, year, "geography"))
    schools = build_schools(las, scale, _global_rng(seed, year, "schools"))
    trusts = build_trusts(schools, las, year, scale, _global_rng(seed, year, "trusts"))
    effects = draw_school_effects(_global_rng(seed, year, "school_effects"), schools.key_stage,
                                  trusts.current_trust, len(trusts.trust_id))
    ctx = _context(year, seed, schools, effects)
    logger.info("generating cohort year=%s seed=%s scale=%s: %d schools, %d trusts", year, seed, scale,
                len(schools), len(trusts.trust_id))

    counts = {"schools": _write_single(out, "schools", schools_table(schools, las)),
              "trust_membership": _write_single(out, "trust_membership", trust_membership_table(trusts, schools))}
    pupil_counts, amendment_parts, mean_multiplier_sq = _write_pupil_tables(out, ctx, files, started)
    counts.update(pupil_counts)
    counts["amendments"] = _write_single(out, "amendments", amendments_table(amendment_parts))

    effects_table = _school_effects_table(schools, trusts, effects)
    pq.write_table(effects_table, out / "ground_truth" / "school_effects.parquet")
    model = _model_json(year, seed, scale, ctx.ks1_era, ctx.models, mean_multiplier_sq)
    (out / "ground_truth" / "model.json").write_text(json.dumps(model, indent=2) + "\n")

    manifest = {
        "generator": "valueadded.synth.cohort",
        "generator_version": GENERATOR_VERSION,
        "year": year, "seed": seed, "scale": scale, "files": files,
        "ks1_era": ctx.ks1_era,
        "blocks": math.ceil(len(schools) / BLOCK_SCHOOLS), "block_schools": BLOCK_SCHOOLS,
        "row_counts": {name: counts[name] for name in INPUT_TABLES},
        "ground_truth_row_counts": {"pupil_truth": counts["pupil_truth"], "school_effects": effects_table.num_rows},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("cohort written to %s in %.1f s: %s", out, time.perf_counter() - started, manifest["row_counts"])
    return manifest
