#ifndef CTREND_H
#define CTREND_H

#include <sqlite3.h>

/// Registers the SQLite aggregate `sp_trend(created_at, value, key_length)` on `db`.
///
/// Rows are put in buckets by the first `key_length` characters of `created_at`
/// (10: a day, 13: an hour, 16: a minute, of `YYYY-MM-DD HH:MM:SS`; a `T` at
/// position 10 counts as the space). NULL and non-numeric values are skipped. The
/// result is text, one line per bucket in key order: `key count p50 p95 max`, the
/// percentiles nearest-rank (the value at rank ceil(p * count)); NULL when no row
/// had a value. One aggregate without GROUP BY: the scan of the created_at index
/// feeds it in order, so SQLite sorts nothing (GROUP BY made it sort a million rows).
int sp_register_trend(sqlite3 *db);

#endif
