package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

// countingProvider counts the vault calls that reach a provider.
type countingProvider struct {
	core.KeyProvider
	wraps, unwraps atomic.Int64
}

func (c *countingProvider) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	c.wraps.Add(1)
	return c.KeyProvider.WrapKey(ctx, dek, ec)
}

func (c *countingProvider) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	c.unwraps.Add(1)
	return c.KeyProvider.UnwrapKey(ctx, s, ec)
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testEnv is a key file and an initialised database in a temp dir.
type testEnv struct {
	db, kek string
	logs    *syncBuffer
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	e := &testEnv{db: filepath.Join(dir, "users.db"), kek: filepath.Join(dir, "kek.json"), logs: &syncBuffer{}}
	if _, err := localfile.Create(e.kek, localfile.CreateOptions{KeyID: "test-kek"}); err != nil {
		t.Fatal(err)
	}
	ring, _ := e.ring(t)
	if err := Init(t.Context(), e.config(ring)); err != nil {
		t.Fatal(err)
	}
	// Init twice changes nothing.
	if err := Init(t.Context(), e.config(ring)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// No test may leave an e-mail address in the log.
		for _, s := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "example.com", "EXAMPLE"} {
			if strings.Contains(strings.ToLower(e.logs.String()), strings.ToLower(s)) {
				t.Errorf("the log contains %q:\n%s", s, e.logs.String())
			}
		}
	})
	return e
}

// ring opens the key file afresh (as a restarted process would) behind a
// counting provider.
func (e *testEnv) ring(t *testing.T) (*core.Keyring, *countingProvider) {
	t.Helper()
	p, err := localfile.Open(e.kek, localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &countingProvider{KeyProvider: p}
	ring, err := core.NewKeyring(c)
	if err != nil {
		t.Fatal(err)
	}
	return ring, c
}

func (e *testEnv) config(ring *core.Keyring) Config {
	return Config{DBPath: e.db, Ring: ring, Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

// open starts a service instance on the env's database.
func (e *testEnv) open(t *testing.T) (*Service, *countingProvider) {
	t.Helper()
	ring, c := e.ring(t)
	s, err := Open(t.Context(), e.config(ring))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

// raw opens the database directly, as an attacker or a DBA would.
func (e *testEnv) raw(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.db+"?_pragma=busy_timeout(30000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// client talks to one instance over loopback HTTP.
type client struct {
	t   *testing.T
	url string
}

func serveHTTP(t *testing.T, s *Service) *client {
	t.Helper()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &client{t: t, url: srv.URL}
}

type reply struct {
	Status int
	ID     int64  `json:"id"`
	Email  string `json:"email"`
	Error  string `json:"error"`
	Header http.Header
	Body   string
}

func (c *client) do(method, path, body string) reply {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.url+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	r := reply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &r); err != nil {
			c.t.Fatalf("%s %s: response %q is not JSON: %v", method, path, b, err)
		}
	}
	return r
}

func (c *client) create(email string) reply {
	c.t.Helper()
	b, _ := json.Marshal(map[string]string{"email": email})
	return c.do("POST", "/users", string(b))
}

func (c *client) mustCreate(email string) int64 {
	c.t.Helper()
	r := c.create(email)
	if r.Status != http.StatusCreated || r.ID <= 0 {
		c.t.Fatalf("create %q: %d %s", email, r.Status, r.Body)
	}
	return r.ID
}

func (c *client) get(id int64) reply {
	c.t.Helper()
	return c.do("GET", fmt.Sprintf("/users/%d", id), "")
}

func (c *client) lookup(email string) reply {
	c.t.Helper()
	return c.do("GET", "/users?email="+strings.ReplaceAll(strings.ReplaceAll(email, "+", "%2B"), " ", "+"), "")
}

// mustFind checks that email looks up to user id with stored address want.
func (c *client) mustFind(email string, id int64, want string) {
	c.t.Helper()
	r := c.lookup(email)
	if r.Status != http.StatusOK || r.ID != id || r.Email != want {
		c.t.Fatalf("lookup %q: %d %s; want 200 id %d email %q", email, r.Status, r.Body, id, want)
	}
}

func TestCreateGetLookup(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	c := serveHTTP(t, s)

	r := c.create("  Alice@Example.COM ")
	if r.Status != http.StatusCreated || r.ID <= 0 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if got, want := r.Header.Get("Location"), fmt.Sprintf("/users/%d", r.ID); got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	alice := r.ID
	bob := c.mustCreate("bob@example.com")
	if bob == alice {
		t.Fatal("two users got the same id")
	}
	// The trimmed address is stored with its case.
	if g := c.get(alice); g.Status != http.StatusOK || g.ID != alice || g.Email != "Alice@Example.COM" {
		t.Fatalf("get alice: %d %s", g.Status, g.Body)
	}
	if g := c.get(bob); g.Status != http.StatusOK || g.Email != "bob@example.com" {
		t.Fatalf("get bob: %d %s", g.Status, g.Body)
	}
	c.mustFind("alice@example.com", alice, "Alice@Example.COM")
	c.mustFind("  ALICE@example.com  ", alice, "Alice@Example.COM")
	c.mustFind("BOB@EXAMPLE.COM", bob, "bob@example.com")
	// POST /users/lookup: the address in the body, not the URL.
	if r := c.do("POST", "/users/lookup", `{"email": " ALICE@example.com"}`); r.Status != http.StatusOK || r.ID != alice || r.Email != "Alice@Example.COM" {
		t.Fatalf("POST /users/lookup: %d %s", r.Status, r.Body)
	}
	if r := c.do("POST", "/users/lookup", `{"email": "carol@example.com"}`); r.Status != http.StatusNotFound {
		t.Fatalf("POST /users/lookup of an unknown address: %d %s", r.Status, r.Body)
	}
	if r := c.lookup("carol@example.com"); r.Status != http.StatusNotFound {
		t.Fatalf("lookup of an unknown address: %d %s", r.Status, r.Body)
	}
	if r := c.get(999); r.Status != http.StatusNotFound {
		t.Fatalf("get of an unknown id: %d %s", r.Status, r.Body)
	}
}

func TestStoredValueIsCiphertextBoundToItsRow(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	c := serveHTTP(t, s)
	alice := c.mustCreate("alice@example.com")
	bob := c.mustCreate("bob@example.com")
	db := e.raw(t)

	var ct, idx []byte
	if err := db.QueryRow(`SELECT email, email_idx FROM users WHERE id = ?`, alice).Scan(&ct, &idx); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(bytes.ToLower(ct), []byte("alice")) || bytes.Contains(bytes.ToLower(idx), []byte("alice")) {
		t.Fatal("the stored columns contain the plaintext")
	}
	if len(ct) != len("alice@example.com")+core.FieldOverhead || ct[0] != core.FieldFormatV1 {
		t.Fatalf("email column: %d bytes, version %#x; want a field ciphertext", len(ct), ct[0])
	}
	if len(idx) != 32 {
		t.Fatalf("email_idx: %d bytes, want 32", len(idx))
	}
	fields := s.keys.Load().fields
	if !bytes.Equal(emailAD(alice), core.FieldAD("users", "email", alice)) || string(emailAD(42)) != "users.email:42" {
		t.Fatalf("associated data %q is not core.FieldAD's", emailAD(alice))
	}
	if pt, err := fields.Decrypt(ct, []byte(fmt.Sprintf("users.email:%d", alice))); err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("decrypt with the row's associated data: %q, %v", pt, err)
	}
	for _, ad := range []string{fmt.Sprintf("users.email:%d", bob), fmt.Sprintf("users.name:%d", alice), fmt.Sprintf("accounts.email:%d", alice), ""} {
		if _, err := fields.Decrypt(ct, []byte(ad)); !errors.Is(err, core.ErrDecryptFailed) {
			t.Errorf("decrypt with associated data %q: %v, want ErrDecryptFailed", ad, err)
		}
	}

	// Swap the two rows' ciphertexts (the index columns stay): neither row
	// may read as the other's address.
	var bobCT []byte
	if err := db.QueryRow(`SELECT email FROM users WHERE id = ?`, bob).Scan(&bobCT); err != nil {
		t.Fatal(err)
	}
	for id, v := range map[int64][]byte{alice: bobCT, bob: ct} {
		if _, err := db.Exec(`UPDATE users SET email = ? WHERE id = ?`, v, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []int64{alice, bob} {
		r := c.get(id)
		if r.Status != http.StatusInternalServerError || !strings.Contains(r.Error, "cannot decrypt") || strings.Contains(r.Body, "@") {
			t.Fatalf("get %d after the swap: %d %s; want 500 saying cannot decrypt", id, r.Status, r.Body)
		}
		// The body is a fixed message: the cause (row, DEK id) is logged only.
		if strings.Contains(r.Body, fmt.Sprintf("user %d", id)) || strings.Contains(r.Body, "DEK") {
			t.Fatalf("get %d after the swap: the 500 body echoes the error: %s", id, r.Body)
		}
	}
	if r := c.lookup("alice@example.com"); r.Status != http.StatusInternalServerError || strings.Contains(r.Body, "bob") {
		t.Fatalf("lookup after the swap: %d %s; want 500", r.Status, r.Body)
	}
	if !strings.Contains(e.logs.String(), "cannot decrypt") {
		t.Error("the decryption failure was not logged")
	}
}

func TestAlteredIndexIsNotAnotherUser(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	c := serveHTTP(t, s)
	alice := c.mustCreate("alice@example.com")
	bob := c.mustCreate("bob@example.com")
	// Swap the two rows' blind indexes: the index is not authenticated,
	// but the lookup checks the row it finds.
	db := e.raw(t)
	var ia, ib []byte
	if err := db.QueryRow(`SELECT email_idx FROM users WHERE id = ?`, alice).Scan(&ia); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT email_idx FROM users WHERE id = ?`, bob).Scan(&ib); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		v  []byte
		id int64
	}{{[]byte{0}, alice}, {ia, bob}, {ib, alice}} {
		if _, err := db.Exec(`UPDATE users SET email_idx = ? WHERE id = ?`, step.v, step.id); err != nil {
			t.Fatal(err)
		}
	}
	r := c.lookup("alice@example.com")
	if r.Status != http.StatusInternalServerError || !strings.Contains(r.Error, "blind index does not match") || strings.Contains(r.Body, "bob") {
		t.Fatalf("lookup with swapped indexes: %d %s; want 500 index mismatch", r.Status, r.Body)
	}
}

func TestNormalizeEmail(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice@example.com", "alice@example.com"},
		{"  Alice@Example.COM ", "alice@example.com"},
		{"\tALICE@EXAMPLE.COM\n", "alice@example.com"},
		{"a.b+tag@sub.example.org", "a.b+tag@sub.example.org"},
		{"x@localhost", "x@localhost"},
	} {
		got, err := NormalizeEmail(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeEmail(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{
		"", "   ", "alice", "@example.com", "alice@", "a@b@c", "al ice@example.com",
		"alice@exa\x00mple.com", "ålice@example.com", "alice@exämple.com",
		strings.Repeat("a", 65) + "@example.com", "a@" + strings.Repeat("b", 253),
	} {
		if _, err := NormalizeEmail(in); !errors.Is(err, ErrBadEmail) {
			t.Errorf("NormalizeEmail(%q): %v, want ErrBadEmail", in, err)
		}
	}
}

func TestBlindIndexOfEquivalentAddresses(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	k := s.keys.Load().index["email_idx"]
	a, _ := NormalizeEmail("  Alice@Example.COM ")
	b, _ := NormalizeEmail("alice@example.com")
	if !bytes.Equal(k.Sum(a), k.Sum(b)) {
		t.Fatal("equivalent addresses have different blind indexes")
	}
	if bytes.Equal(k.Sum(a), k.Sum("alice@example.org")) {
		t.Fatal("different addresses have the same blind index")
	}
	// What the service stores is that value.
	c := serveHTTP(t, s)
	id := c.mustCreate("  Alice@Example.COM ")
	var idx []byte
	if err := e.raw(t).QueryRow(`SELECT email_idx FROM users WHERE id = ?`, id).Scan(&idx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(idx, k.Sum(b)) {
		t.Fatal("stored blind index is not HMAC(key, normalised address)")
	}
	// The key never prints.
	for _, verb := range []string{"%v", "%s", "%x", "%#v", "%+v", "%q"} {
		if out := fmt.Sprintf(verb, k); !strings.Contains(out, "REDACTED") || strings.Contains(out, fmt.Sprintf("%x", k.key)) {
			t.Errorf("%s of an IndexKey prints %q", verb, out)
		}
	}
}

func TestDuplicateIsConflict(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	c := serveHTTP(t, s)
	c.mustCreate("alice@example.com")
	for _, dup := range []string{"alice@example.com", "  ALICE@Example.com", "Alice@EXAMPLE.COM\t"} {
		if r := c.create(dup); r.Status != http.StatusConflict || !strings.Contains(r.Error, "already registered") {
			t.Fatalf("create %q again: %d %s; want 409", dup, r.Status, r.Body)
		}
	}
	var n int
	if err := e.raw(t).QueryRow(`SELECT COUNT(*) FROM users`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows (%v), want 1", n, err)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	c := serveHTTP(t, s)
	for _, tc := range []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"POST", "/users", ``, 400, "JSON object"},
		{"POST", "/users", `not json`, 400, "JSON object"},
		{"POST", "/users", `{}`, 400, `missing field "email"`},
		{"POST", "/users", `{"email": 42}`, 400, "JSON object"},
		{"POST", "/users", `{"email": "a@b", "admin": true}`, 400, "JSON object"},
		{"POST", "/users", `{"email": "a@b"} {"email": "c@d"}`, 400, "one JSON object"},
		{"POST", "/users", `{"email": ""}`, 400, "invalid e-mail address: empty"},
		{"POST", "/users", `{"email": "no-at-sign"}`, 400, "exactly one '@'"},
		{"POST", "/users", `{"email": "ålice@example.com"}`, 400, "printable ASCII"},
		{"POST", "/users", `{"email": "` + strings.Repeat("a", 300) + `@x"}`, 400, "longer than 254"},
		{"POST", "/users", `{"email": "` + strings.Repeat("a", 5000) + `"}`, 413, "request body over"},
		{"GET", "/users/abc", ``, 400, "positive decimal integer"},
		{"GET", "/users/0", ``, 400, "positive decimal integer"},
		{"GET", "/users/-1", ``, 400, "positive decimal integer"},
		{"GET", "/users/99999999999999999999", ``, 400, "positive decimal integer"},
		{"GET", "/users/7", ``, 404, "user not found"},
		{"GET", "/users", ``, 400, "exactly one query parameter"},
		{"GET", "/users?email=a@b&email=c@d", ``, 400, "exactly one query parameter"},
		{"GET", "/users?email=a@b&x=1", ``, 400, "exactly one query parameter"},
		{"GET", "/users?email=nope", ``, 400, "invalid e-mail address"},
		{"POST", "/users/lookup", `{}`, 400, `missing field "email"`},
		{"POST", "/users/lookup", `{"email": "nope"}`, 400, "invalid e-mail address"},
		{"POST", "/users/lookup", `{"email": "a@b", "x": 1}`, 400, "JSON object"},
	} {
		r := c.do(tc.method, tc.path, tc.body)
		if r.Status != tc.status || !strings.Contains(r.Error, tc.msg) {
			t.Errorf("%s %s %.40q: %d %s; want %d with %q", tc.method, tc.path, tc.body, r.Status, r.Body, tc.status, tc.msg)
		}
	}
	// Methods and paths outside the API.
	req, _ := http.NewRequest("DELETE", c.url+"/users/1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /users/1: %d, want 405", resp.StatusCode)
	}
}

func TestNoVaultCallPerRequest(t *testing.T) {
	e := newEnv(t)
	s, vault := e.open(t)
	// Open unwrapped each key once: the e-mail DEK and the index DEK.
	if got := vault.unwraps.Load(); got != 2 {
		t.Fatalf("%d unwraps at start, want 2", got)
	}
	before := vault.unwraps.Load() + vault.wraps.Load()
	c := serveHTTP(t, s)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 25 {
				email := fmt.Sprintf("user%d.%d@example.net", w, i)
				id := c.mustCreate(email)
				if r := c.get(id); r.Status != http.StatusOK || r.Email != email {
					t.Errorf("get %d: %d %s", id, r.Status, r.Body)
				}
				if r := c.lookup(strings.ToUpper(email)); r.Status != http.StatusOK || r.ID != id {
					t.Errorf("lookup %d: %d %s", id, r.Status, r.Body)
				}
				if r := c.create(email); r.Status != http.StatusConflict {
					t.Errorf("duplicate %d: %d %s", id, r.Status, r.Body)
				}
			}
		})
	}
	wg.Wait()
	if after := vault.unwraps.Load() + vault.wraps.Load(); after != before {
		t.Fatalf("800 requests made %d vault calls, want 0", after-before)
	}
	// A reload is where the vault is called again.
	if err := s.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := vault.unwraps.Load(); got != 4 {
		t.Fatalf("%d unwraps after one reload, want 4", got)
	}
}

func TestRestartReadsOldRows(t *testing.T) {
	e := newEnv(t)
	s, _ := e.open(t)
	c := serveHTTP(t, s)
	ids := map[string]int64{}
	for _, em := range []string{"alice@example.com", "Bob@Example.com", "carol@example.com"} {
		ids[em] = c.mustCreate(em)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, _ := e.open(t) // a new process: the key file and database reopened
	c2 := serveHTTP(t, s2)
	for em, id := range ids {
		if r := c2.get(id); r.Status != http.StatusOK || r.Email != em {
			t.Fatalf("after restart, get %d: %d %s", id, r.Status, r.Body)
		}
		c2.mustFind(strings.ToLower(em), id, em)
	}
	if r := c2.create("BOB@example.com"); r.Status != http.StatusConflict {
		t.Fatalf("after restart, duplicate: %d %s", r.Status, r.Body)
	}
	// Ids are not reused after a delete.
	last := ids["carol@example.com"]
	if _, err := e.raw(t).Exec(`DELETE FROM users WHERE id = ?`, last); err != nil {
		t.Fatal(err)
	}
	if id := c2.mustCreate("dave@example.com"); id <= last {
		t.Fatalf("new id %d reuses a deleted one (last was %d)", id, last)
	}
}

func TestOpenUninitialised(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	p, err := localfile.Create(kek, localfile.CreateOptions{KeyID: "k"})
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := core.NewKeyring(p)
	_, err = Open(t.Context(), Config{DBPath: filepath.Join(dir, "x.db"), Ring: ring})
	if err == nil || !strings.Contains(err.Error(), "initialised with -init") {
		t.Fatalf("Open of an empty database: %v", err)
	}
	if _, err := Open(t.Context(), Config{DBPath: filepath.Join(dir, "x.db"), Ring: ring, EmailKeyset: "a", IndexKeyset: "a"}); err == nil {
		t.Fatal("Open accepted one keyset for both roles")
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8080": true, "[::1]:80": true, "localhost:0": true, "127.0.0.2:1": true,
		":8080": false, "0.0.0.0:8080": false, "[::]:80": false, "192.168.1.2:80": false,
		"example.com:80": false, "127.0.0.1": false,
	} {
		if err := checkLoopback(addr); (err == nil) != ok {
			t.Errorf("checkLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}

func TestServerTimeouts(t *testing.T) {
	srv := newServer(http.NotFoundHandler(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if srv.ReadHeaderTimeout == 0 || srv.ReadTimeout == 0 || srv.WriteTimeout == 0 || srv.IdleTimeout == 0 || srv.MaxHeaderBytes == 0 {
		t.Fatalf("server without a timeout or header limit: %+v", srv)
	}
}
