package core_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
)

// memTable is an in-memory ReencryptSource: rows by key, a checkpoint, and
// hooks to simulate concurrent writers and crashes.
type memTable struct {
	cols       []string
	rows       map[int64][]core.FieldValue
	checkpoint core.Cursor
	applies    int
	// beforeApply runs inside Apply before the swaps (a concurrent writer).
	beforeApply func(m *memTable, updates []core.RowUpdate)
	// failApply makes Apply number n (1-based) fail, storing nothing.
	failApply int
}

func (m *memTable) Columns() []string { return m.cols }

func (m *memTable) keys() []int64 {
	ks := make([]int64, 0, len(m.rows))
	for k := range m.rows {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}

func (m *memTable) Scan(ctx context.Context, after core.Cursor, limit int) ([]core.ReencryptRow, error) {
	var out []core.ReencryptRow
	for _, k := range m.keys() {
		if after.Set && k <= after.Key {
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, core.ReencryptRow{Key: k, Values: append([]core.FieldValue(nil), m.rows[k]...)})
	}
	return out, nil
}

func (m *memTable) Reread(ctx context.Context, keys []int64) ([]core.ReencryptRow, error) {
	var out []core.ReencryptRow
	for _, k := range keys {
		if v, ok := m.rows[k]; ok {
			out = append(out, core.ReencryptRow{Key: k, Values: append([]core.FieldValue(nil), v...)})
		}
	}
	return out, nil
}

func sameValue(a, b core.FieldValue) bool {
	return a.Null == b.Null && a.Text == b.Text && bytes.Equal(a.Data, b.Data)
}

func (m *memTable) Apply(ctx context.Context, updates []core.RowUpdate, cp core.Cursor) ([]bool, error) {
	m.applies++
	if m.applies == m.failApply {
		return nil, errors.New("simulated crash")
	}
	if m.beforeApply != nil {
		m.beforeApply(m, updates)
	}
	out := make([]bool, len(updates))
	for i, u := range updates {
		row, ok := m.rows[u.Key]
		if !ok {
			continue
		}
		match := true
		for _, s := range u.Set {
			if !sameValue(row[s.Column], s.Old) {
				match = false
			}
		}
		if !match {
			continue
		}
		for _, s := range u.Set {
			row[s.Column] = s.New
		}
		out[i] = true
	}
	m.checkpoint = cp
	return out, nil
}

// rotationFixture: a keyset with an old DEK, a table of values under it,
// and a cipher whose primary is a new DEK.
type rotationFixture struct {
	oldFC, newFC *core.FieldCipher
	oldID, newID uint32
	table        *memTable
	plain        map[int64][]string // "" = NULL
	ad           *core.ADTemplate
}

func newRotationFixture(t *testing.T, n int, text bool) *rotationFixture {
	t.Helper()
	oldD, _ := core.NewDEK()
	newD, _ := core.NewDEK()
	f := &rotationFixture{oldID: 0x1111, newID: 0x2222}
	var err error
	f.oldFC, err = core.NewFieldCipher(f.oldID, map[uint32]core.DEK{f.oldID: oldD})
	if err != nil {
		t.Fatal(err)
	}
	f.newFC, err = core.NewFieldCipher(f.newID, map[uint32]core.DEK{f.oldID: oldD, f.newID: newD})
	if err != nil {
		t.Fatal(err)
	}
	f.ad, err = core.ParseADTemplate(core.DefaultADFormat, "users")
	if err != nil {
		t.Fatal(err)
	}
	f.table = &memTable{cols: []string{"email", "phone"}, rows: map[int64][]core.FieldValue{}}
	f.plain = map[int64][]string{}
	for i := range n {
		k := int64(i*3 - 10) // negative keys and gaps too
		var vals []core.FieldValue
		var pts []string
		for c, col := range f.table.cols {
			if c == 1 && i%4 == 0 {
				vals = append(vals, core.FieldValue{Null: true})
				pts = append(pts, "")
				continue
			}
			pt := fmt.Sprintf("%s-%d@example.com", col, i)
			vals = append(vals, f.seal(t, f.oldFC, col, k, pt, text))
			pts = append(pts, pt)
		}
		f.table.rows[k] = vals
		f.plain[k] = pts
	}
	return f
}

func (f *rotationFixture) seal(t testing.TB, fc *core.FieldCipher, col string, k int64, pt string, text bool) core.FieldValue {
	ct, err := fc.Encrypt([]byte(pt), f.ad.Append(nil, col, k))
	if err != nil {
		t.Fatal(err)
	}
	if text {
		return core.FieldValue{Text: true, Data: []byte(core.EncodeFieldText(ct))}
	}
	return core.FieldValue{Data: ct}
}

// check asserts that every value decrypts to its plaintext and is under
// want (0: do not check the DEK).
func (f *rotationFixture) check(t *testing.T, want uint32) {
	t.Helper()
	for k, vals := range f.table.rows {
		for c, v := range vals {
			pt := f.plain[k][c]
			if v.Null {
				if pt != "" {
					t.Fatalf("row %d col %d: NULL, want a value", k, c)
				}
				continue
			}
			ct := v.Data
			if v.Text {
				var err error
				if ct, err = core.DecodeFieldText(string(v.Data)); err != nil {
					t.Fatalf("row %d: %v", k, err)
				}
			}
			got, err := f.newFC.Decrypt(ct, f.ad.Append(nil, f.table.cols[c], k))
			if err != nil {
				t.Fatalf("row %d col %d: %v", k, c, err)
			}
			if string(got) != pt {
				t.Fatalf("row %d col %d: %q, want %q", k, c, got, pt)
			}
			if id, _ := core.DEKID(ct); want != 0 && id != want {
				t.Fatalf("row %d col %d: under DEK %08x, want %08x", k, c, id, want)
			}
		}
	}
}

func TestReencryptRun(t *testing.T) {
	for _, text := range []bool{false, true} {
		t.Run(fmt.Sprintf("text=%v", text), func(t *testing.T) {
			f := newRotationFixture(t, 250, text)
			var calls int
			r, err := core.NewReencrypter(core.ReencryptOptions{Cipher: f.newFC, AD: f.ad.Func(), Batch: 40,
				Progress: func(*core.ReencryptStats, core.Cursor) { calls++ }})
			if err != nil {
				t.Fatal(err)
			}
			st, err := r.Run(t.Context(), f.table, core.Cursor{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Rows != 250 || st.Reencrypted != 250+187 || st.Null != 63 || st.Current != 0 || st.Failed != 0 || st.Conflicts != 0 {
				t.Fatalf("stats %+v", st)
			}
			if calls != 7 || f.table.applies != 7 {
				t.Errorf("progress calls %d, applies %d, want 7", calls, f.table.applies)
			}
			if !f.table.checkpoint.Set || f.table.checkpoint.Key != 249*3-10 {
				t.Errorf("checkpoint %v", f.table.checkpoint)
			}
			f.check(t, f.newID)
			// A second run finds everything current.
			st, err = r.Run(t.Context(), f.table, core.Cursor{}, nil)
			if err != nil || st.Reencrypted != 0 || st.Current != 250+187 {
				t.Fatalf("second run: %+v, %v", st, err)
			}
			v, err := core.Verify(t.Context(), f.table, 33, nil)
			if err != nil {
				t.Fatal(err)
			}
			if v.ByDEK["email"][f.newID] != 250 || v.ByDEK["phone"][f.newID] != 187 || v.OldValues(f.newID) != 0 {
				t.Errorf("verify %+v", v.ByDEK)
			}
		})
	}
}

// A batch that fails stores nothing; rerunning from the stored checkpoint
// finishes the job with every value correct.
func TestReencryptResume(t *testing.T) {
	f := newRotationFixture(t, 100, false)
	f.table.failApply = 3
	r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: f.newFC, AD: f.ad.Func(), Batch: 10})
	st, err := r.Run(t.Context(), f.table, core.Cursor{}, nil)
	if err == nil || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("err = %v", err)
	}
	if st.Reencrypted == 0 || f.table.checkpoint.Key != 19*3-10 {
		t.Fatalf("checkpoint %v after %+v", f.table.checkpoint, st)
	}
	v, _ := core.Verify(t.Context(), f.table, 1000, nil)
	if v.ByDEK["email"][f.newID] != 20 || v.ByDEK["email"][f.oldID] != 80 {
		t.Fatalf("after crash: %v", v.ByDEK)
	}
	f.check(t, 0)
	if _, err := r.Run(t.Context(), f.table, f.table.checkpoint, nil); err != nil {
		t.Fatal(err)
	}
	f.check(t, f.newID)
}

// Concurrent writes are never overwritten: a row changed between read and
// swap is read again; the new value (under either DEK) is kept or moved.
func TestReencryptConflicts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		writeOld  bool // the application writes under the old DEK (has not reloaded)
		always    bool // the application writes before every attempt
		conflicts int64
	}{
		{"new DEK once", false, false, 0},
		{"old DEK once", true, false, 0},
		{"old DEK always", true, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRotationFixture(t, 30, false)
			const victim = 5*3 - 10
			n := 0
			f.table.beforeApply = func(m *memTable, updates []core.RowUpdate) {
				for _, u := range updates {
					if u.Key != victim || (n > 0 && !tc.always) {
						continue
					}
					n++
					fc := f.newFC
					if tc.writeOld {
						fc = f.oldFC
					}
					pt := fmt.Sprintf("written-by-app-%d", n)
					m.rows[victim][0] = f.seal(t, fc, "email", victim, pt, false)
					f.plain[victim][0] = pt
				}
			}
			r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: f.newFC, AD: f.ad.Func(), Batch: 7})
			st, err := r.Run(t.Context(), f.table, core.Cursor{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Conflicts != tc.conflicts {
				t.Errorf("conflicts %d, want %d (%+v)", st.Conflicts, tc.conflicts, st)
			}
			f.check(t, 0)
			if tc.conflicts == 0 {
				f.check(t, f.newID)
			}
		})
	}
}

func TestReencryptFailuresAndDryRun(t *testing.T) {
	f := newRotationFixture(t, 20, false)
	f.table.rows[2][0] = core.FieldValue{Data: []byte("not a ciphertext")}
	f.table.rows[5][0].Data[len(f.table.rows[5][0].Data)-1] ^= 1 // tampered
	f.table.rows[8][0] = f.seal(t, f.oldFC, "email", 9, "moved from another row", false)
	f.table.rows[11][0] = core.FieldValue{Text: true, Data: []byte("!!")}

	dry, _ := core.NewReencrypter(core.ReencryptOptions{AD: f.ad.Func(), DryRun: true, DryRunTarget: f.newID})
	st, err := dry.Run(t.Context(), f.table, core.Cursor{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.table.applies != 0 {
		t.Error("dry run wrote")
	}
	if st.ByDEK["email"][f.oldID] != 18 || st.Failed != 2 || st.ByDEK["phone"][f.oldID] != 15 {
		t.Errorf("dry run %+v", st)
	}

	r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: f.newFC, AD: f.ad.Func(), MaxFailures: 3})
	st, err = r.Run(t.Context(), f.table, core.Cursor{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Failed != 4 || len(st.Failures) != 3 {
		t.Fatalf("failed %d, %d kept: %+v", st.Failed, len(st.Failures), st.Failures)
	}
	for _, fl := range st.Failures {
		if strings.Contains(fl.Reason, "example.com") || fl.Column != "email" {
			t.Errorf("failure %+v", fl)
		}
	}
	for i, fl := range st.Failures {
		if fl.Reason == "" {
			t.Errorf("failure %d without reason", i)
		}
	}
	v, _ := core.Verify(t.Context(), f.table, 7, nil)
	if v.ByDEK["email"][0] != 2 || v.ByDEK["email"][f.oldID] != 2 || v.OldValues(f.newID) != 4 {
		t.Errorf("verify %v", v.ByDEK)
	}
}

func TestReencryptCancel(t *testing.T) {
	f := newRotationFixture(t, 50, false)
	ctx, cancel := context.WithCancel(t.Context())
	r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: f.newFC, AD: f.ad.Func(), Batch: 10,
		Progress: func(st *core.ReencryptStats, at core.Cursor) {
			if st.Rows >= 20 {
				cancel()
			}
		}})
	_, err := r.Run(ctx, f.table, core.Cursor{}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if f.table.applies != 2 {
		t.Errorf("applies %d", f.table.applies)
	}
}

func TestNewReencrypterErrors(t *testing.T) {
	f := newRotationFixture(t, 1, false)
	for _, o := range []core.ReencryptOptions{
		{AD: f.ad.Func()},
		{Cipher: f.newFC},
		{Cipher: f.newFC, AD: f.ad.Func(), Batch: -1},
		{Cipher: f.newFC, AD: f.ad.Func(), Batch: 2_000_000},
	} {
		if _, err := core.NewReencrypter(o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func TestADTemplate(t *testing.T) {
	for _, tc := range []struct {
		format, want string // want "" = error
	}{
		{core.DefaultADFormat, "users.email:-42"},
		{"{table}|{column}|{key}", "users|email|-42"},
		{"app:v1/{{{table}}}/{column}/{key}", "app:v1/{users}/email/-42"},
		{"{key}", "-42"},
		{"users.email:{key}", "users.email:-42"},
		{"", ""},
		{"{table}.{column}", ""},
		{"{table}{key}", ""},
		{"{column}_{key}", ""},
		{"{column}-{key}", ""},
		{"{column}a{key}", ""},
		{"{column}a.{key}", "emaila.-42"},
		{"{nope}:{key}", ""},
		{"{key", ""},
		{"}{key}", ""},
		{"a\n{key}", ""},
		{strings.Repeat("a", core.MaxADFormat) + "{key}", ""},
	} {
		tpl, err := core.ParseADTemplate(tc.format, "users")
		if tc.want == "" {
			if err == nil || !errors.Is(err, core.ErrMalformed) {
				t.Errorf("%q: err = %v", tc.format, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.format, err)
			continue
		}
		if got := string(tpl.Append(nil, "email", -42)); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.format, got, tc.want)
		}
		if tpl.String() != tc.format {
			t.Errorf("String() = %q", tpl.String())
		}
	}
	tpl, _ := core.ParseADTemplate(core.DefaultADFormat, "users")
	if got := string(core.FieldAD("users", "email", 7)); got != "users.email:7" || got != string(tpl.Append(nil, "email", 7)) {
		t.Errorf("FieldAD = %q", got)
	}
	if _, err := core.ParseADTemplate("{key}", "bad-table"); err == nil {
		t.Error("bad table accepted")
	}
}

func TestValidIdentifier(t *testing.T) {
	for name, ok := range map[string]bool{
		"users": true, "_x1": true, "Email_2": true, strings.Repeat("a", 63): true,
		"": false, "1a": false, "a-b": false, "a b": false, `a"b`: false, "a;drop": false,
		"é": false, strings.Repeat("a", 64): false, "a\x00": false,
	} {
		if err := core.ValidIdentifier(name); (err == nil) != ok {
			t.Errorf("%q: %v", name, err)
		}
	}
}

// FuzzADTemplate: any format parses or fails with ErrMalformed, never
// panics; an accepted one expands without panicking and keys map to
// distinct associated data.
func FuzzADTemplate(f *testing.F) {
	for _, s := range []string{core.DefaultADFormat, "{table}|{column}|{key}", "{{{key}}}", "{key", "}", "{column}{key}", "{key}", "{column}:{key}", "{table}/{key}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, format string) {
		tpl, err := core.ParseADTemplate(format, "users")
		if err != nil {
			if !errors.Is(err, core.ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		a := tpl.Append(nil, "email", 1)
		b := tpl.Append(nil, "email", 11)
		c := tpl.Append(nil, "email1", 1)
		if bytes.Equal(a, b) || bytes.Equal(b, c) {
			t.Fatalf("%q: ambiguous expansion %q %q %q", format, a, b, c)
		}
		// Different columns of one row: distinct exactly when the
		// template binds the column (keyctl reencrypt requires {column}
		// with several columns).
		for _, pair := range [][2]string{{"email", "phone"}, {"a", "a1"}, {"a1", "a_1"}, {"email", "email_"}} {
			x, y := tpl.Append(nil, pair[0], 7), tpl.Append(nil, pair[1], 7)
			if bytes.Equal(x, y) == tpl.BindsColumn() {
				t.Fatalf("%q (binds column: %v): columns %q and %q of key 7 give %q and %q", format, tpl.BindsColumn(), pair[0], pair[1], x, y)
			}
		}
		// Different tables, same column and key: distinct exactly when
		// the template binds the table.
		other, err := core.ParseADTemplate(format, "users2")
		if err != nil {
			t.Fatalf("%q parses for users but not users2: %v", format, err)
		}
		x, y := tpl.Append(nil, "email", 7), other.Append(nil, "email", 7)
		if bytes.Equal(x, y) == tpl.BindsTable() {
			t.Fatalf("%q (binds table: %v): tables users and users2 give %q and %q", format, tpl.BindsTable(), x, y)
		}
	})
}

// An application forms the associated data of a value the way keyctl
// reencrypt's default --aad does.
func ExampleFieldAD() {
	fmt.Println(string(core.FieldAD("users", "email", 42)))
	tpl, _ := core.ParseADTemplate("app/{table}/{column}/{key}", "users")
	fmt.Println(string(tpl.Append(nil, "email", 42)))
	// Output:
	// users.email:42
	// app/users/email/42
}

// Zero-length values (not NULL) hold no ciphertext: they are counted as
// empty and skipped, like NULLs, so that they neither fail every run nor
// count under an "invalid" DEK in verify and block retiring the old DEK.
// Moved counts the values re-encrypted per source DEK.
func TestReencryptEmptyValues(t *testing.T) {
	for _, text := range []bool{false, true} {
		f := newRotationFixture(t, 20, text)
		f.table.rows[-7][1] = core.FieldValue{Text: text, Data: []byte{}}
		f.plain[-7][1] = ""
		r, err := core.NewReencrypter(core.ReencryptOptions{Cipher: f.newFC, AD: f.ad.Func(), Batch: 7})
		if err != nil {
			t.Fatal(err)
		}
		st, err := r.Run(t.Context(), f.table, core.Cursor{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Failed != 0 || st.Empty != 1 || st.Null != 5 || st.Reencrypted != 34 {
			t.Fatalf("text=%v: stats %+v", text, st)
		}
		if len(st.Moved) != 1 || st.Moved[f.oldID] != 34 {
			t.Errorf("moved %v, want 34 from %x", st.Moved, f.oldID)
		}
		if got := f.table.rows[-7][1]; got.Null || len(got.Data) != 0 {
			t.Errorf("empty value rewritten: %+v", got)
		}
		v, err := core.Verify(t.Context(), f.table, 5, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v.Empty != 1 || v.Failed != 0 || v.OldValues(f.newID) != 0 {
			t.Errorf("text=%v: verify %+v", text, v)
		}
		st, _ = r.Run(t.Context(), f.table, core.Cursor{}, nil)
		if st.Failed != 0 || st.Reencrypted != 0 || st.Empty != 1 {
			t.Errorf("second run %+v", st)
		}
	}
}
