package core

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Re-encryption (DEK rotation) of database fields: see docs/reencrypt.md.
//
// The engine reads the rows of a table in primary-key order, in batches, and
// rewrites every encrypted value that is not under the FieldCipher's primary
// DEK: decrypt with the DEK its header names, encrypt under the primary with
// the same associated data, and store it with a compare-and-swap (the row is
// updated only if it still holds the value that was read). A batch and its
// checkpoint are committed in one transaction, so a run that is killed
// resumes exactly after the last committed batch. Core holds no database
// code: a [ReencryptSource] (package store/sqltable for SQLite and
// PostgreSQL) does the reading and writing.

// ErrLeaseLost is returned by [ReencryptSource.Apply] when the source is a
// leased chunk of a shared job and the lease was taken over by another
// worker (it expired): nothing of the batch was stored. The worker stops
// working on the chunk; the new owner resumes from the last checkpoint.
var ErrLeaseLost = errors.New("lease on the chunk lost to another worker")

// Cursor is a position in primary-key order: the key of the last row
// processed. The zero Cursor (Set false) is before the first row.
type Cursor struct {
	Set bool
	Key int64
}

// String renders the cursor for messages: "start" or the key.
func (c Cursor) String() string {
	if !c.Set {
		return "start"
	}
	return strconv.FormatInt(c.Key, 10)
}

// FieldValue is one stored value of an encrypted column.
type FieldValue struct {
	// Null is a SQL NULL; the engine skips it (and an empty Data too).
	Null bool
	// Text is true when the column stores the field ciphertext in its text
	// form ([EncodeFieldText]: a TEXT column), false for the binary form (a
	// BLOB or BYTEA column). A rewritten value keeps the form.
	Text bool
	// Data is the value as stored: the binary ciphertext, or the bytes of
	// the text form when Text is set.
	Data []byte
}

// ReencryptRow is one row as read by [ReencryptSource.Scan]: its integer
// primary key and one value per encrypted column, in the source's column
// order.
type ReencryptRow struct {
	Key    int64
	Values []FieldValue
}

// ColumnUpdate is one value to swap: column index Column goes from Old (the
// value that was read) to New.
type ColumnUpdate struct {
	Column   int
	Old, New FieldValue
}

// RowUpdate is the compare-and-swap of one row: every Set is applied only
// if every column of Set still holds its Old value; otherwise the row is
// left as it is.
type RowUpdate struct {
	Key int64
	Set []ColumnUpdate
}

// ReencryptSource is a table of encrypted rows (or a key range of one) as the
// re-encryption engine sees it. Implementations: package store/sqltable.
// Methods are called from one goroutine.
type ReencryptSource interface {
	// Columns names the encrypted columns, in the order of
	// ReencryptRow.Values.
	Columns() []string

	// Scan returns up to limit rows with a key greater than after (all keys
	// when after is the zero Cursor) within the source's range, in
	// ascending key order. An empty result means the end of the range.
	Scan(ctx context.Context, after Cursor, limit int) ([]ReencryptRow, error)

	// Reread returns the current content of the rows with the given keys
	// (a row deleted meanwhile is absent from the result), in any order.
	Reread(ctx context.Context, keys []int64) ([]ReencryptRow, error)

	// Apply performs the compare-and-swaps of updates and records
	// checkpoint as the source's resume position, all in one transaction:
	// either everything (the swaps that matched and the checkpoint) is
	// stored, or nothing is and err is non-nil. swapped[i] reports whether
	// update i matched and was applied. updates may be empty (a batch with
	// nothing to change still advances the checkpoint). A source that
	// cannot store checkpoints (a read-only verify scan) returns an error.
	// Errors wrap ErrLeaseLost when a shared job's lease was lost.
	Apply(ctx context.Context, updates []RowUpdate, checkpoint Cursor) (swapped []bool, err error)
}

// ADFunc forms the associated data of one value from the column name and
// the row key. It appends to dst and returns the result. See [ADTemplate].
type ADFunc func(dst []byte, column string, key int64) []byte

// ReencryptOptions configure a [Reencrypter].
type ReencryptOptions struct {
	// Cipher encrypts under its primary DEK (the rotation's target) and
	// decrypts with any DEK of the keyset that is not retired.
	Cipher *FieldCipher
	// AD forms the associated data; required.
	AD ADFunc
	// Batch is the number of rows per transaction; 1000 if zero.
	Batch int
	// DryRun reads and counts, decrypts nothing and writes nothing. Cipher
	// may then be nil: the values under DryRunTarget (or, with a Cipher, its
	// primary) count as current, all others as to be re-encrypted.
	DryRun bool
	// DryRunTarget is the target DEK of a dry run without a Cipher; 0 when
	// the target does not exist yet (every value would be re-encrypted).
	DryRunTarget uint32
	// Retries is how many times a row whose compare-and-swap lost to a
	// concurrent write is read again and retried within the batch (3 if
	// zero; negative for none). A row still losing is counted in
	// Conflicts and left as the application wrote it.
	Retries int
	// MaxFailures caps the failures kept in ReencryptStats.Failures (they
	// are all counted); 100 if zero.
	MaxFailures int
	// Progress, if set, is called after each batch with the totals so far
	// and the cursor just committed.
	Progress func(st *ReencryptStats, at Cursor)
}

// ReencryptFailure is a value that could not be re-encrypted. Reason never
// holds plaintext or key material.
type ReencryptFailure struct {
	Key    int64  `json:"key"`
	Column string `json:"column"`
	Reason string `json:"reason"`
}

// ReencryptStats are the counts of a run (or of a verify or dry-run pass).
// Values are counted per column value; Rows per row.
type ReencryptStats struct {
	// Rows is the number of rows read.
	Rows int64 `json:"rows"`
	// Reencrypted values were rewritten under the target DEK (in a dry run:
	// would be).
	Reencrypted int64 `json:"reencrypted"`
	// Current values were already under the target DEK.
	Current int64 `json:"already_current"`
	// Null values were skipped.
	Null int64 `json:"null"`
	// Empty values (zero-length, not NULL) were skipped like NULLs: no
	// ciphertext is empty, so they hold no data to re-encrypt.
	Empty int64 `json:"empty"`
	// Conflicts are rows whose compare-and-swap kept losing to concurrent
	// writes; they hold what the application wrote.
	Conflicts int64 `json:"conflicts"`
	// Failed values could not be read or decrypted; they are unchanged.
	Failed int64 `json:"failed"`
	// Failures lists the first failures (see MaxFailures).
	Failures []ReencryptFailure `json:"failures,omitempty"`
	// ByDEK counts, per column, the values per DEK id (0: a value whose
	// header does not parse). Filled by Verify and by dry runs: in a dry
	// run it counts the values that would be re-encrypted.
	ByDEK map[string]map[uint32]int64 `json:"by_dek,omitempty"`
	// Moved counts, per DEK id, the values this pass re-encrypted (or
	// tried to) from that DEK onto the target: the DEKs a rotation
	// replaced in these columns. Not filled by Verify or dry runs.
	Moved map[uint32]int64 `json:"moved_from,omitempty"`
	// Last is the key of the last row committed.
	Last Cursor `json:"-"`
	// Elapsed is the time the pass took.
	Elapsed time.Duration `json:"-"`
}

func (st *ReencryptStats) fail(max int, key int64, column string, err error) {
	st.Failed++
	if len(st.Failures) < max {
		st.Failures = append(st.Failures, ReencryptFailure{Key: key, Column: column, Reason: err.Error()})
	}
}

func (st *ReencryptStats) countDEK(column string, id uint32) {
	if st.ByDEK == nil {
		st.ByDEK = map[string]map[uint32]int64{}
	}
	m := st.ByDEK[column]
	if m == nil {
		m = map[uint32]int64{}
		st.ByDEK[column] = m
	}
	m[id]++
}

// OldValues returns the number of values, over all columns of a verify
// pass's ByDEK, under a DEK other than target (including unparsable ones).
func (st *ReencryptStats) OldValues(target uint32) int64 {
	var n int64
	for _, m := range st.ByDEK {
		for id, c := range m {
			if id != target {
				n += c
			}
		}
	}
	return n
}

// Reencrypter moves the values of a [ReencryptSource] onto a FieldCipher's
// primary DEK.
type Reencrypter struct {
	o ReencryptOptions
}

// NewReencrypter checks o and returns a Reencrypter.
func NewReencrypter(o ReencryptOptions) (*Reencrypter, error) {
	if o.Cipher == nil && !o.DryRun {
		return nil, errors.New("reencrypt: no field cipher")
	}
	if o.AD == nil {
		return nil, errors.New("reencrypt: no associated-data function")
	}
	if o.Batch == 0 {
		o.Batch = 1000
	}
	if o.Batch < 1 || o.Batch > 1_000_000 {
		return nil, fmt.Errorf("reencrypt: batch of %d rows (allowed 1 to 1000000): %w", o.Batch, ErrMalformed)
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	if o.MaxFailures == 0 {
		o.MaxFailures = 100
	}
	return &Reencrypter{o: o}, nil
}

// Target returns the id of the DEK values are moved onto.
func (r *Reencrypter) Target() uint32 {
	if r.o.Cipher == nil {
		return r.o.DryRunTarget
	}
	return r.o.Cipher.PrimaryID()
}

// Run re-encrypts src from the row after start to the end of its range,
// adding to st (which may carry the totals of earlier chunks; a nil st is
// allowed). Each batch is one Apply. A value that fails to decrypt is
// counted and left unchanged; the run goes on. Run returns when the range is
// done, ctx is cancelled, or the source fails (the error names the cursor
// reached: everything before it is committed).
func (r *Reencrypter) Run(ctx context.Context, src ReencryptSource, start Cursor, st *ReencryptStats) (*ReencryptStats, error) {
	if st == nil {
		st = &ReencryptStats{}
	}
	began := time.Now()
	defer func() { st.Elapsed += time.Since(began) }()
	cols := src.Columns()
	cur := start
	st.Last = cur
	var ad []byte
	for {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("reencrypt: stopped after key %s: %w", cur, err)
		}
		rows, err := src.Scan(ctx, cur, r.o.Batch)
		if err != nil {
			return st, fmt.Errorf("reencrypt: reading rows after key %s: %w", cur, err)
		}
		if len(rows) == 0 {
			return st, nil
		}
		next := Cursor{Set: true, Key: rows[len(rows)-1].Key}
		if next.Key <= cur.Key && cur.Set {
			return st, fmt.Errorf("reencrypt: source returned key %d after %s, not in ascending order: %w", next.Key, cur, ErrMalformed)
		}
		st.Rows += int64(len(rows))
		updates := make([]RowUpdate, 0, len(rows))
		sets := make([]ColumnUpdate, 0, len(rows)*len(cols)) // one allocation for the batch
		for i := range rows {
			var u RowUpdate
			u, ad = r.plan(&rows[i], cols, st, ad, true, sets[len(sets):len(sets):cap(sets)])
			if len(u.Set) > 0 {
				sets = sets[:len(sets)+len(u.Set)]
				updates = append(updates, u)
			}
		}
		if r.o.DryRun {
			cur = next
			st.Last = cur
			if r.o.Progress != nil {
				r.o.Progress(st, cur)
			}
			continue
		}
		if err := r.apply(ctx, src, cols, updates, next, st, &ad); err != nil {
			return st, fmt.Errorf("reencrypt: batch after key %s: %w", cur, err)
		}
		cur = next
		st.Last = cur
		if r.o.Progress != nil {
			r.o.Progress(st, cur)
		}
	}
}

// apply stores updates with checkpoint, then retries the lost swaps on
// freshly read rows.
func (r *Reencrypter) apply(ctx context.Context, src ReencryptSource, cols []string, updates []RowUpdate, checkpoint Cursor, st *ReencryptStats, ad *[]byte) error {
	for attempt := 0; ; attempt++ {
		swapped, err := src.Apply(ctx, updates, checkpoint)
		if err != nil {
			return err
		}
		if len(swapped) != len(updates) {
			return fmt.Errorf("source reported %d outcomes for %d updates", len(swapped), len(updates))
		}
		var lost []int64
		for i, ok := range swapped {
			if ok {
				st.Reencrypted += int64(len(updates[i].Set))
			} else {
				lost = append(lost, updates[i].Key)
			}
		}
		if len(lost) == 0 {
			return nil
		}
		if attempt >= r.o.Retries {
			st.Conflicts += int64(len(lost))
			return nil
		}
		rows, err := src.Reread(ctx, lost)
		if err != nil {
			return fmt.Errorf("reading again %d row(s) changed concurrently: %w", len(lost), err)
		}
		updates = updates[:0]
		for i := range rows {
			var u RowUpdate
			u, *ad = r.plan(&rows[i], cols, st, *ad, false, nil)
			if len(u.Set) > 0 {
				updates = append(updates, u)
			}
		}
		if len(updates) == 0 {
			return nil
		}
	}
}

// plan decides what to do with each value of row. count is false on a
// retry, so that a value is counted once as current or null. The swaps are
// appended to set (which may have room for them).
func (r *Reencrypter) plan(row *ReencryptRow, cols []string, st *ReencryptStats, ad []byte, count bool, set []ColumnUpdate) (RowUpdate, []byte) {
	u := RowUpdate{Key: row.Key, Set: set}
	target := r.Target()
	for c, v := range row.Values {
		col := "?"
		if c < len(cols) {
			col = cols[c]
		}
		if v.Null {
			if count {
				st.Null++
			}
			continue
		}
		if len(v.Data) == 0 {
			if count {
				st.Empty++
			}
			continue
		}
		ct := v.Data
		if v.Text {
			b, err := DecodeFieldText(string(v.Data))
			if err != nil {
				st.fail(r.o.MaxFailures, row.Key, col, err)
				continue
			}
			ct = b
		}
		id, err := DEKID(ct)
		if err != nil {
			st.fail(r.o.MaxFailures, row.Key, col, err)
			continue
		}
		if id == target {
			if count {
				st.Current++
			}
			continue
		}
		if r.o.DryRun {
			st.Reencrypted++
			st.countDEK(col, id)
			continue
		}
		ad = r.o.AD(ad[:0], col, row.Key)
		pt, err := r.o.Cipher.Decrypt(ct, ad)
		if err != nil {
			st.fail(r.o.MaxFailures, row.Key, col, err)
			continue
		}
		nct, err := r.o.Cipher.Encrypt(pt, ad)
		clear(pt)
		if err != nil {
			st.fail(r.o.MaxFailures, row.Key, col, err)
			continue
		}
		nv := FieldValue{Text: v.Text, Data: nct}
		if v.Text {
			nv.Data = []byte(EncodeFieldText(nct))
		}
		u.Set = append(u.Set, ColumnUpdate{Column: c, Old: v, New: nv})
		if count {
			if st.Moved == nil {
				st.Moved = map[uint32]int64{}
			}
			st.Moved[id]++
		}
	}
	return u, ad
}

// Verify counts the values of src per column and DEK id (ByDEK; id 0 for a
// value whose header does not parse, also counted in Failed). NULL and
// empty values are counted in Null and Empty, not per DEK. It reads only
// headers: no key is used and nothing is written. progress may be nil.
func Verify(ctx context.Context, src ReencryptSource, batch int, progress func(st *ReencryptStats, at Cursor)) (*ReencryptStats, error) {
	if batch <= 0 {
		batch = 1000
	}
	st := &ReencryptStats{ByDEK: map[string]map[uint32]int64{}}
	began := time.Now()
	defer func() { st.Elapsed = time.Since(began) }()
	cols := src.Columns()
	for _, c := range cols {
		st.ByDEK[c] = map[uint32]int64{}
	}
	var cur Cursor
	for {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("verify: stopped after key %s: %w", cur, err)
		}
		rows, err := src.Scan(ctx, cur, batch)
		if err != nil {
			return st, fmt.Errorf("verify: reading rows after key %s: %w", cur, err)
		}
		if len(rows) == 0 {
			return st, nil
		}
		st.Rows += int64(len(rows))
		for _, row := range rows {
			for c, v := range row.Values {
				col := cols[c]
				if v.Null {
					st.Null++
					continue
				}
				if len(v.Data) == 0 {
					st.Empty++
					continue
				}
				ct := v.Data
				if v.Text {
					b, err := DecodeFieldText(string(v.Data))
					if err != nil {
						st.fail(100, row.Key, col, err)
						st.countDEK(col, 0)
						continue
					}
					ct = b
				}
				id, err := DEKID(ct)
				if err != nil {
					st.fail(100, row.Key, col, err)
					st.countDEK(col, 0)
					continue
				}
				st.countDEK(col, id)
			}
		}
		cur = Cursor{Set: true, Key: rows[len(rows)-1].Key}
		st.Last = cur
		if progress != nil {
			progress(st, cur)
		}
	}
}

// ADTemplate is a parsed associated-data format: literal text and the
// placeholders {table}, {column} and {key} (the row key in decimal, with a
// leading '-' if negative). "{{" and "}}" stand for literal braces. The
// associated data is the UTF-8 bytes of the expanded template, nothing
// more: no length prefixes and no terminator.
//
// DefaultADFormat, "{table}.{column}:{key}", gives "users.email:42" for
// column email of row 42 of table users. Because table and column names are
// identifiers ([A-Za-z_][A-Za-z0-9_]*) and the key is a decimal integer,
// the expansion is unambiguous as long as two placeholders are separated by
// literal text that contains a character outside [A-Za-z0-9_-]; ParseADTemplate
// refuses a template that breaks this rule, or that leaves out {key} (a
// value could then be copied into another row and still decrypt).
//
// What the associated data binds is what the template names: without
// {column} (see [ADTemplate.BindsColumn]) the values of two columns of a
// row can be swapped and still decrypt, so a caller re-encrypting several
// columns must require it; without {table}, a value copied to the same
// column and key of another table still decrypts.
type ADTemplate struct {
	table string
	parts []adPart
	src   string
}

type adPart struct {
	lit string
	ph  byte // 0: literal; 't', 'c', 'k'
}

// DefaultADFormat is the associated-data format keyctl reencrypt uses when
// none is given. [FieldAD] forms the same bytes.
const DefaultADFormat = "{table}.{column}:{key}"

// MaxADFormat bounds the length of an associated-data format.
const MaxADFormat = 1024

// ParseADTemplate parses format for table. Errors wrap ErrMalformed.
func ParseADTemplate(format, table string) (*ADTemplate, error) {
	if len(format) > MaxADFormat {
		return nil, fmt.Errorf("associated-data format: %d bytes exceeds the limit of %d: %w", len(format), MaxADFormat, ErrMalformed)
	}
	if err := ValidIdentifier(table); err != nil {
		return nil, fmt.Errorf("associated-data format: table: %w", err)
	}
	t := &ADTemplate{table: table, src: format}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, adPart{lit: lit.String()})
			lit.Reset()
		}
	}
	hasKey := false
	for i := 0; i < len(format); {
		ch := format[i]
		switch {
		case ch == '{' && strings.HasPrefix(format[i:], "{{"):
			lit.WriteByte('{')
			i += 2
		case ch == '}' && strings.HasPrefix(format[i:], "}}"):
			lit.WriteByte('}')
			i += 2
		case ch == '{':
			end := strings.IndexByte(format[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("associated-data format: unclosed '{' at byte %d: %w", i, ErrMalformed)
			}
			name := format[i+1 : i+end]
			var ph byte
			switch name {
			case "table":
				ph = 't'
			case "column":
				ph = 'c'
			case "key":
				ph = 'k'
				hasKey = true
			default:
				return nil, fmt.Errorf("associated-data format: unknown placeholder %q (known: {table}, {column}, {key}): %w", oneLineQ(name), ErrMalformed)
			}
			if n := len(t.parts); lit.Len() == 0 && n > 0 && t.parts[n-1].ph != 0 {
				return nil, fmt.Errorf("associated-data format: placeholders must be separated by literal text: %w", ErrMalformed)
			}
			if lit.Len() > 0 && !hasSeparator(lit.String()) && len(t.parts) > 0 && t.parts[len(t.parts)-1].ph != 0 {
				return nil, fmt.Errorf("associated-data format: the text between two placeholders must contain a character other than letters, digits, '_' and '-': %w", ErrMalformed)
			}
			flush()
			t.parts = append(t.parts, adPart{ph: ph})
			i += end + 1
		case ch == '}':
			return nil, fmt.Errorf("associated-data format: lone '}' at byte %d (write }} for a literal brace): %w", i, ErrMalformed)
		case ch < 0x20 || ch == 0x7f:
			return nil, fmt.Errorf("associated-data format: control character at byte %d: %w", i, ErrMalformed)
		default:
			lit.WriteByte(ch)
			i++
		}
	}
	flush()
	if !hasKey {
		return nil, fmt.Errorf("associated-data format %q has no {key}: values could be swapped between rows: %w", oneLineQ(format), ErrMalformed)
	}
	return t, nil
}

func hasSeparator(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return true
		}
	}
	return false
}

// oneLineQ shortens a user string for an error message.
func oneLineQ(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return s
}

// BindsColumn reports whether the template has {column}: whether values
// of different columns of one row get different associated data.
func (t *ADTemplate) BindsColumn() bool { return t.has('c') }

// BindsTable reports whether the template has {table}.
func (t *ADTemplate) BindsTable() bool { return t.has('t') }

func (t *ADTemplate) has(ph byte) bool {
	for _, p := range t.parts {
		if p.ph == ph {
			return true
		}
	}
	return false
}

// String returns the format the template was parsed from.
func (t *ADTemplate) String() string { return t.src }

// Append appends the associated data of column's value in row key to dst.
func (t *ADTemplate) Append(dst []byte, column string, key int64) []byte {
	for _, p := range t.parts {
		switch p.ph {
		case 0:
			dst = append(dst, p.lit...)
		case 't':
			dst = append(dst, t.table...)
		case 'c':
			dst = append(dst, column...)
		case 'k':
			dst = strconv.AppendInt(dst, key, 10)
		}
	}
	return dst
}

// Func returns t.Append as an ADFunc.
func (t *ADTemplate) Func() ADFunc { return t.Append }

// FieldAD returns the associated data of DefaultADFormat for a value of
// table.column in row key: "table.column:key". Applications that encrypt
// with this (and keyctl reencrypt's default --aad) agree byte for byte.
func FieldAD(table, column string, key int64) []byte {
	b := make([]byte, 0, len(table)+len(column)+22)
	b = append(b, table...)
	b = append(b, '.')
	b = append(b, column...)
	b = append(b, ':')
	return strconv.AppendInt(b, key, 10)
}

// MaxIdentifier is the longest table or column name accepted (PostgreSQL's
// limit).
const MaxIdentifier = 63

// ValidIdentifier checks that name is a plain SQL identifier:
// [A-Za-z_][A-Za-z0-9_]*, at most MaxIdentifier bytes. Names are still
// quoted in SQL; the rule keeps them free of quoting tricks and keeps the
// associated data unambiguous. Errors wrap ErrMalformed.
func ValidIdentifier(name string) error {
	if name == "" {
		return fmt.Errorf("empty name: %w", ErrMalformed)
	}
	if len(name) > MaxIdentifier {
		return fmt.Errorf("name of %d bytes exceeds the limit of %d: %w", len(name), MaxIdentifier, ErrMalformed)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			return fmt.Errorf("name %q: only letters, digits and '_' are allowed, not starting with a digit: %w", oneLineQ(strings.ToValidUTF8(name, "?")), ErrMalformed)
		}
	}
	return nil
}
