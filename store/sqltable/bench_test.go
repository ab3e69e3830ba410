package sqltable_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/pgtest"
	"github.com/keyctl/keyctl/store/sqltable"
)

// BenchmarkReencrypt re-encrypts a table of 20-40 byte e-mails, one whole
// pass per op, side by side with its floor:
//
//	impl=raw     the same table's plain bulk UPDATE of the same column, with
//	             the same batching (rows read in key order, 1,000 per
//	             transaction; SQLite: one UPDATE per row, PostgreSQL: one
//	             UPDATE ... FROM unnest per batch) and no cryptography;
//	impl=keyctl  the re-encryption engine: decrypt, encrypt under the other
//	             DEK, compare-and-swap UPDATE, checkpoint and lease in the
//	             batch's transaction.
//
// Compare with benchstat -col /impl. Rows: KEYCTL_BENCH_ROWS (default
// 100,000; the figure is 1,000,000). It is not run in CI beyond a
// smoke pass. See docs/reencrypt.md for numbers.
func BenchmarkReencrypt(b *testing.B) {
	rows := 100000
	if s := os.Getenv("KEYCTL_BENCH_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("KEYCTL_BENCH_ROWS=%q", s)
		}
		rows = n
	}
	if testing.Short() {
		rows = min(rows, 5000)
	}
	for _, kind := range kinds {
		b.Run("db="+kind, func(b *testing.B) {
			db := openBenchDB(b, kind)
			k := newKeys(b, "users_kc")
			benchFill(b, db, k, "users_raw", rows)
			benchFill(b, db, k, "users_kc", rows)
			b.Run("impl=raw", func(b *testing.B) {
				for b.Loop() {
					rawPass(b, db, "users_raw", 1000)
				}
				b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			})
			b.Run("impl=keyctl", func(b *testing.B) {
				tbl, err := db.Table(context.Background(), sqltable.Spec{Table: "users_kc", Key: "id", Columns: []string{"email"}})
				if err != nil {
					b.Fatal(err)
				}
				// Alternate the target so that every pass rewrites every row.
				i := 0
				for b.Loop() {
					var first []byte
					if err := db.SQL().QueryRow(`SELECT email FROM users_kc ORDER BY id LIMIT 1`).Scan(&first); err != nil {
						b.Fatal(err)
					}
					fc := k.newFC
					if id, _ := core.DEKID(first); id == k.newID {
						fc = k.back
					}
					i++
					job, _, err := tbl.CreateJob(context.Background(), sqltable.JobOptions{AAD: core.DefaultADFormat, TargetDEK: fc.PrimaryID(), ChunkKeys: int64(rows)})
					if err != nil {
						b.Fatal(err)
					}
					r, err := core.NewReencrypter(core.ReencryptOptions{Cipher: fc, AD: k.ad.Func(), Batch: 1000})
					if err != nil {
						b.Fatal(err)
					}
					st, err := job.Process(context.Background(), r, sqltable.ProcessOptions{Owner: "bench"}, nil)
					if err != nil {
						b.Fatal(err)
					}
					if st.Reencrypted != int64(rows) || st.Failed != 0 {
						b.Fatalf("pass %d: %+v", i, st)
					}
				}
				b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			})
		})
	}
}

func openBenchDB(b *testing.B, kind string) *sqltable.DB {
	var db *sqltable.DB
	var err error
	switch kind {
	case "sqlite":
		path := filepath.Join(b.TempDir(), "bench.db")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			b.Fatal(err)
		}
		db, err = sqltable.OpenSQLite(context.Background(), path)
	case "postgres":
		db, err = sqltable.OpenPostgres(context.Background(), pgtest.Start(b))
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// benchFill creates table name (id, email) with rows e-mails of 20 to 40
// bytes encrypted under k's old DEK with the associated data of users_kc.
func benchFill(b *testing.B, db *sqltable.DB, k *keys, name string, rows int) {
	ctx := context.Background()
	ddl := `CREATE TABLE ` + name + ` (id INTEGER PRIMARY KEY, email BLOB NOT NULL)`
	if db.Postgres() {
		ddl = `CREATE TABLE ` + name + ` (id BIGINT PRIMARY KEY, email BYTEA NOT NULL)`
	}
	if _, err := db.SQL().ExecContext(ctx, ddl); err != nil {
		b.Fatal(err)
	}
	tx, err := db.SQL().BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	for lo := 1; lo <= rows; lo += 500 {
		var q strings.Builder
		q.WriteString("INSERT INTO " + name + " (id, email) VALUES ")
		var args []any
		for id := lo; id < lo+500 && id <= rows; id++ {
			if id > lo {
				q.WriteString(", ")
			}
			n := len(args)
			if db.Postgres() {
				fmt.Fprintf(&q, "($%d, $%d)", n+1, n+2)
			} else {
				q.WriteString("(?, ?)")
			}
			email := fmt.Sprintf("u%07d%s@example.com", id, strings.Repeat("x", id%13)) // 20 to 32 bytes
			ct, err := k.oldFC.Encrypt([]byte(email), k.ad.Append(nil, "email", int64(id)))
			if err != nil {
				b.Fatal(err)
			}
			args = append(args, id, ct)
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	if db.Postgres() {
		if _, err := db.SQL().ExecContext(ctx, "VACUUM ANALYZE "+name); err != nil {
			b.Fatal(err)
		}
	}
}

// rawPass is the floor: the same reads and writes as a re-encryption pass
// without cryptography, compare-and-swap or checkpoint: rows in key order,
// batch per transaction, each row's value replaced by one of the same
// length (the last byte flipped); in SQLite one UPDATE per row, in
// PostgreSQL one UPDATE ... FROM unnest per batch, as keyctl does.
func rawPass(b *testing.B, db *sqltable.DB, name string, batch int) {
	ctx := context.Background()
	sel := `SELECT id, email FROM ` + name + ` WHERE id > ? ORDER BY id LIMIT ?`
	upd := `UPDATE ` + name + ` SET email = ? WHERE id = ?`
	if db.Postgres() {
		sel = `SELECT id, email FROM ` + name + ` WHERE id > $1 ORDER BY id LIMIT $2`
		upd = `UPDATE ` + name + ` AS t SET email = v.n FROM unnest($1::bigint[], $2::bytea[]) AS v(k, n) WHERE t.id = v.k`
	}
	after := int64(-1 << 62)
	type row struct {
		id int64
		v  []byte
	}
	buf := make([]row, 0, batch)
	for {
		rs, err := db.SQL().QueryContext(ctx, sel, after, batch)
		if err != nil {
			b.Fatal(err)
		}
		buf = buf[:0]
		for rs.Next() {
			var r row
			if err := rs.Scan(&r.id, &r.v); err != nil {
				b.Fatal(err)
			}
			buf = append(buf, r)
		}
		rs.Close()
		if len(buf) == 0 {
			return
		}
		tx, err := db.SQL().BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if db.Postgres() {
			// One statement per batch, as the keyctl side does in PostgreSQL.
			keys := make([]int64, len(buf))
			vals := make([][]byte, len(buf))
			for i, r := range buf {
				r.v[len(r.v)-1] ^= 1
				keys[i], vals[i] = r.id, r.v
			}
			if _, err := tx.ExecContext(ctx, upd, keys, vals); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			after = buf[len(buf)-1].id
			continue
		}
		st, err := tx.PrepareContext(ctx, upd)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range buf {
			r.v[len(r.v)-1] ^= 1
			if _, err := st.ExecContext(ctx, r.v, r.id); err != nil {
				b.Fatal(err)
			}
		}
		st.Close()
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		after = buf[len(buf)-1].id
	}
}
