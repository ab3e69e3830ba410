package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keyctl/keyctl/core"
)

// The blind-index key cannot be rotated in place: an HMAC cannot be
// recomputed without the e-mail it was computed over, and a lookup needs
// every row under one key. So a rotation fills a second column under a new
// key, switches lookups to it, and drops the old one (docs/blind-index.md):
//
//	BeginIndexRotation   new index DEK; add the other column (state filling)
//	                     -- reload every instance: they now write both columns
//	BackfillIndex        fill the new column for the older rows, in batches
//	SwitchIndex          new column active, old retiring (refused while a row lacks the new value)
//	                     -- reload every instance: they now read the new column
//	FinishIndexRotation  drop the old column; retire its DEK in the index keyset
//	                     -- reload every instance
//
// Each step is one transaction on the users database (with a keyset update
// before or after it), checks that it follows the previous step, and can be
// run again after a crash. RotateBlindIndex runs all four on one instance.

// ErrRotationState reports a rotation step run out of order.
var ErrRotationState = errors.New("blind-index rotation step out of order")

// ErrIndexIncomplete reports rows that still lack a value in the column a
// rotation is about to switch to (or keep): reload every instance and run
// the backfill again.
var ErrIndexIncomplete = errors.New("blind-index column not filled for every row")

func otherColumn(name string) string {
	if name == indexColumns[0] {
		return indexColumns[1]
	}
	return indexColumns[0]
}

func uniqueIndexName(col string) string { return "users_" + col + "_key" }

// BeginIndexRotation adds a new DEK to the index keyset and a new, empty
// blind-index column (the name not in use) recorded as filling under it,
// then reloads s. It returns the new column's name. Every other instance
// must reload before the backfill's result is relied on (SwitchIndex checks
// it).
func (s *Service) BeginIndexRotation(ctx context.Context) (string, error) {
	cols, err := readIndexColumns(ctx, s.db)
	if err != nil {
		return "", fmt.Errorf("begin index rotation: %w", err)
	}
	if len(cols) != 1 {
		return "", fmt.Errorf("begin index rotation: a rotation is already in progress (%s is %s): run the next step: %w", cols[1].name, cols[1].state, ErrRotationState)
	}
	col := otherColumn(cols[0].name)
	var id uint32
	// A crash after this Update and before the commit below leaves an
	// unused DEK in the index keyset; FinishIndexRotation retires it.
	err = s.indexStore.Update(ctx, func(ks *core.Keyset) error {
		var err error
		id, err = ks.AddDEK(ctx, s.cfg.Ring, time.Now())
		return err
	})
	if err != nil {
		return "", fmt.Errorf("begin index rotation: keyset %q: %w", s.cfg.IndexKeyset, err)
	}
	if s.hookBeginDEKAdded != nil {
		s.hookBeginDEKAdded()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("begin index rotation: %w", err)
	}
	defer tx.Rollback()
	// Check again under the write lock: another admin may have begun.
	if cols, err = readIndexColumns(ctx, tx); err != nil {
		return "", fmt.Errorf("begin index rotation: %w", err)
	}
	if len(cols) != 1 {
		return "", fmt.Errorf("begin index rotation: another rotation began concurrently: %w", ErrRotationState)
	}
	for _, q := range []string{
		`ALTER TABLE users ADD COLUMN ` + col + ` BLOB`,
		`CREATE UNIQUE INDEX ` + uniqueIndexName(col) + ` ON users (` + col + `)`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return "", fmt.Errorf("begin index rotation: add column %s: %w", col, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO users_blind_index (name, dek_id, state) VALUES (?, ?, 'filling')`, col, int64(id)); err != nil {
		return "", fmt.Errorf("begin index rotation: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("begin index rotation: commit: %w", err)
	}
	// A FinishIndexRotation of the previous rotation that ran its keyset
	// update between our AddDEK and our commit saw no column using the new
	// DEK and retired it (it checks the columns under the keyset's lock, so
	// from now on it sees ours): make it the primary again.
	err = s.indexStore.Update(ctx, func(ks *core.Keyset) error {
		e, err := ks.Entry(id)
		if err != nil {
			return err
		}
		if e.State == core.StatePrimary {
			return nil
		}
		s.log.Warn("index DEK restored as primary after a concurrent finish", "index_dek", fmt.Sprintf("%08x", id))
		return ks.SetState(id, core.StatePrimary)
	})
	if err != nil {
		return "", fmt.Errorf("begin index rotation: keyset %q: %w", s.cfg.IndexKeyset, err)
	}
	s.log.Info("blind-index rotation begun", "column", col, "index_dek", fmt.Sprintf("%08x", id))
	if err := s.Reload(ctx); err != nil {
		return "", fmt.Errorf("begin index rotation: reload: %w", err)
	}
	return col, nil
}

// BackfillStats says what BackfillIndex did.
type BackfillStats struct {
	// Filled is the number of rows given a value.
	Filled int
	// Skipped is the number of rows that changed between read and write
	// (their e-mail ciphertext, or the column itself): left for the next
	// run.
	Skipped int
}

// BackfillIndex fills every row whose value in a filling or active
// blind-index column is NULL, batch rows at a time (in id order, one
// transaction per batch). Each write is a compare-and-swap on the row's id
// and e-mail ciphertext and on the column still being NULL, so a row changed
// meanwhile is skipped, never given a stale index. It holds no state
// between runs: the NULLs are what is left to do, so a killed backfill is
// resumed by running it again. A row that does not decrypt stops it with an
// error naming the row.
func (s *Service) BackfillIndex(ctx context.Context, batch int) (BackfillStats, error) {
	var st BackfillStats
	if batch <= 0 {
		batch = 500
	}
	k := s.keys.Load()
	if k == nil {
		return st, errors.New("backfill: service closed")
	}
	cols, err := readIndexColumns(ctx, s.db)
	if err != nil {
		return st, fmt.Errorf("backfill: %w", err)
	}
	for _, c := range cols {
		if c.state == IndexRetiring {
			continue
		}
		ik := k.index[c.name]
		if ik == nil || ik.dekID != c.dekID {
			return st, fmt.Errorf("backfill: column %s: %w", c.name, ErrReloadNeeded)
		}
		if err := s.backfillColumn(ctx, k, c.name, ik, batch, &st); err != nil {
			return st, err
		}
	}
	return st, nil
}

func (s *Service) backfillColumn(ctx context.Context, k *keys, col string, ik *IndexKey, batch int, st *BackfillStats) error {
	type row struct {
		id    int64
		ct    []byte
		value []byte
	}
	var after int64
	for {
		rows, err := s.db.QueryContext(ctx, `SELECT id, email FROM users WHERE `+col+` IS NULL AND id > ? ORDER BY id LIMIT ?`, after, batch)
		if err != nil {
			return fmt.Errorf("backfill %s: %w", col, err)
		}
		var page []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.ct); err != nil {
				rows.Close()
				return fmt.Errorf("backfill %s: %w", col, err)
			}
			page = append(page, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("backfill %s: %w", col, err)
		}
		if len(page) == 0 {
			return nil
		}
		for i := range page {
			pt, err := k.fields.Decrypt(page[i].ct, emailAD(page[i].id))
			if err != nil {
				return fmt.Errorf("backfill %s: user %d: %w", col, page[i].id, err)
			}
			norm, err := NormalizeEmail(string(pt))
			clear(pt)
			if err != nil {
				return fmt.Errorf("backfill %s: user %d: stored e-mail: %w", col, page[i].id, err)
			}
			page[i].value = ik.Sum(norm)
		}
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("backfill %s: %w", col, err)
		}
		for _, r := range page {
			res, err := tx.ExecContext(ctx, `UPDATE users SET `+col+` = ? WHERE id = ? AND email = ? AND `+col+` IS NULL`, r.value, r.id, r.ct)
			if err != nil {
				tx.Rollback()
				return fmt.Errorf("backfill %s: user %d: %w", col, r.id, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				tx.Rollback()
				return fmt.Errorf("backfill %s: user %d: %w", col, r.id, err)
			}
			if n == 1 {
				st.Filled++
			} else {
				st.Skipped++
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("backfill %s: commit: %w", col, err)
		}
		after = page[len(page)-1].id
		s.log.Info("backfill batch", "column", col, "last_id", after, "filled", st.Filled, "skipped", st.Skipped)
	}
}

// SwitchIndex makes the filling column active and the active one retiring,
// then reloads s: lookups read the new column. It refuses, changing nothing,
// while any row lacks a value in the new column (ErrIndexIncomplete). Until
// FinishIndexRotation, every instance still writes both columns, so an
// instance not yet reloaded keeps finding new rows in the old column.
func (s *Service) SwitchIndex(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("switch index: %w", err)
	}
	defer tx.Rollback()
	cols, err := readIndexColumns(ctx, tx)
	if err != nil {
		return fmt.Errorf("switch index: %w", err)
	}
	i := slices.IndexFunc(cols, func(c indexColumn) bool { return c.state == IndexFilling })
	if len(cols) != 2 || i < 0 {
		return fmt.Errorf("switch index: no column is filling (run BeginIndexRotation first): %w", ErrRotationState)
	}
	next, old := cols[i], cols[1-i]
	var missing int64
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM users WHERE `+next.name+` IS NULL`).Scan(&missing); err != nil {
		return fmt.Errorf("switch index: %w", err)
	}
	if missing > 0 {
		return fmt.Errorf("switch index: %d rows have no value in %s (reload every instance, then run the backfill again): %w", missing, next.name, ErrIndexIncomplete)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE users_blind_index SET state = CASE name WHEN ? THEN 'active' ELSE 'retiring' END`, next.name); err != nil {
		return fmt.Errorf("switch index: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("switch index: commit: %w", err)
	}
	s.log.Info("blind index switched", "active", next.name, "retiring", old.name)
	if err := s.Reload(ctx); err != nil {
		return fmt.Errorf("switch index: reload: %w", err)
	}
	return nil
}

// FinishIndexRotation drops the retiring column and its unique index and
// forgets it, in one transaction (refused while a row lacks a value in the
// active column), then retires in the index keyset every DEK that no column
// uses, and reloads s. Run it only once every instance has reloaded after
// SwitchIndex. An instance that has not reloaded since keeps working: it
// writes only the columns still recorded. Run again after a crash, it
// retires what is left.
func (s *Service) FinishIndexRotation(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("finish index rotation: %w", err)
	}
	defer tx.Rollback()
	cols, err := readIndexColumns(ctx, tx)
	if err != nil {
		return fmt.Errorf("finish index rotation: %w", err)
	}
	if slices.ContainsFunc(cols, func(c indexColumn) bool { return c.state == IndexFilling }) {
		return fmt.Errorf("finish index rotation: a column is still filling (run SwitchIndex first): %w", ErrRotationState)
	}
	var active indexColumn
	for _, c := range cols {
		if c.state == IndexActive {
			active = c
		}
	}
	// Check the active column is complete before dropping anything.
	var missing int64
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM users WHERE `+active.name+` IS NULL`).Scan(&missing); err != nil {
		return fmt.Errorf("finish index rotation: %w", err)
	}
	if missing > 0 {
		return fmt.Errorf("finish index rotation: %d rows have no value in %s (run the backfill again): %w", missing, active.name, ErrIndexIncomplete)
	}
	for _, c := range cols {
		if c.state != IndexRetiring {
			continue
		}
		for _, q := range []string{
			`DROP INDEX IF EXISTS ` + uniqueIndexName(c.name),
			`ALTER TABLE users DROP COLUMN ` + c.name,
		} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("finish index rotation: drop column %s: %w", c.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM users_blind_index WHERE name = ?`, c.name); err != nil {
			return fmt.Errorf("finish index rotation: %w", err)
		}
		s.log.Info("blind-index column dropped", "column", c.name, "index_dek", fmt.Sprintf("%08x", c.dekID))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("finish index rotation: commit: %w", err)
	}
	if s.hookFinishCommitted != nil {
		s.hookFinishCommitted()
	}
	if err := s.retireUnusedIndexDEKs(ctx); err != nil {
		return fmt.Errorf("finish index rotation: keyset %q: %w", s.cfg.IndexKeyset, err)
	}
	if err := s.Reload(ctx); err != nil {
		return fmt.Errorf("finish index rotation: reload: %w", err)
	}
	return nil
}

// retireUnusedIndexDEKs retires in the index keyset every DEK that no
// blind-index column uses, and makes the active column's DEK the primary
// unless a column is filling (a rotation began since). Retired, not
// deleted: a dropped column was the only data under it, and deleting is
// the operator's call. The columns are read inside the keyset update,
// under the keyset store's lock: a BeginIndexRotation that committed its
// column before is seen and its DEK kept; one whose DEK was added but whose
// column is not committed yet may lose it here, and restores it itself
// after its commit (see BeginIndexRotation).
func (s *Service) retireUnusedIndexDEKs(ctx context.Context) error {
	return s.indexStore.Update(ctx, func(ks *core.Keyset) error {
		cols, err := readIndexColumns(ctx, s.db)
		if err != nil {
			return err
		}
		used := map[uint32]bool{}
		filling := false
		var active uint32
		for _, c := range cols {
			used[c.dekID] = true
			switch c.state {
			case IndexFilling:
				filling = true
			case IndexActive:
				active = c.dekID
			}
		}
		if !filling {
			if err := ks.SetState(active, core.StatePrimary); err != nil {
				return err
			}
		}
		for _, e := range ks.DEKs {
			if !used[e.ID] && e.State != core.StateRetired && e.State != core.StatePrimary {
				if err := ks.SetState(e.ID, core.StateRetired); err != nil {
					return err
				}
				s.log.Info("index DEK retired", "keyset", s.cfg.IndexKeyset, "dek", fmt.Sprintf("%08x", e.ID))
			}
		}
		return nil
	})
}

// RotateBlindIndex runs the whole rotation on s: begin, backfill, switch,
// finish. It suits a deployment where s is the only instance (each step
// reloads s). With several instances, run the steps one by one and reload
// every instance between them, as docs/blind-index.md describes. It returns
// the new active column.
func RotateBlindIndex(ctx context.Context, s *Service, batch int) (string, error) {
	col, err := s.BeginIndexRotation(ctx)
	if err != nil {
		return "", err
	}
	if _, err := s.BackfillIndex(ctx, batch); err != nil {
		return "", err
	}
	if err := s.SwitchIndex(ctx); err != nil {
		return "", err
	}
	if err := s.FinishIndexRotation(ctx); err != nil {
		return "", err
	}
	return col, nil
}
