"""Roll-ups: every measure at school, trust, local authority, region and national level,
pupil subgroups, suppression, identification, comparisons and trends (SPEC 2.4).

The release stage is `valueadded.rollup.stage.stage_rollup`; one concept per module:
measures (the catalogue), config (conf/rollup), pupils (pupil values and subgroups),
trusts (the trust rule), aggregate (cells, levels, intervals), history (trends),
suppression, compare (ranks, similar schools, quadrants) and identify.
"""
