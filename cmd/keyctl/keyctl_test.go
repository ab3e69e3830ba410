package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

func TestExitCode(t *testing.T) {
	cmd := func(err error) error { return &commandError{err: err} }
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, 0},
		{"cobra parse error", errors.New("unknown flag: --x"), 2},
		{"usage", cmd(usagef("no")), 2},
		{"hinted usage", cmd(withHint(usagef("no"), "h")), 2},
		{"config invalid", cmd(fmt.Errorf("x: %w", config.ErrInvalid)), 2},
		{"config missing", cmd(fmt.Errorf("x: %w", config.ErrNotFound)), 2},
		{"malformed", cmd(fmt.Errorf("x: %w", core.ErrMalformed)), 2},
		{"unsupported version", cmd(core.ErrUnsupportedVersion), 2},
		{"unknown algorithm", cmd(core.ErrUnknownAlgorithm), 2},
		{"unwrap failed", cmd(core.ErrUnwrapFailed), 2},
		{"decrypt failed", cmd(core.ErrDecryptFailed), 2},
		{"no provider", cmd(core.ErrNoProvider), 2},
		{"key not found", cmd(core.ErrKeyNotFound), 2},
		{"permission", cmd(fmt.Errorf("mode 0644: %w", core.ErrPermission)), 2},
		{"current version", cmd(localfile.ErrCurrentVersion), 2},
		{"failed precondition", cmd(fmt.Errorf("x: %w", core.ErrFailedPrecondition)), 2},
		{"exists", cmd(existsError("f", "--force")), 2},
		{"unavailable", cmd(core.ErrUnavailable), 1},
		{"unavailable joined with input", cmd(errors.Join(core.ErrUnwrapFailed, core.ErrUnavailable)), 1},
		{"disabled", cmd(core.ErrKeyDisabled), 1},
		{"unsupported op", cmd(core.ErrUnsupported), 1},
		{"canceled", cmd(context.Canceled), 1},
		{"plain", cmd(errors.New("disk on fire")), 1},
		{"exit status", &exitStatus{code: 2}, 2},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s: exitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestErrorLine(t *testing.T) {
	err := &commandError{err: withHint(fmt.Errorf("first\nsecond\r\nthird\x1b[31m: %w", core.ErrMalformed), "do\nthis")}
	got := errorLine(err)
	want := "keyctl: error: first; second; third?[31m: malformed input; hint: do; this"
	if got != want {
		t.Errorf("errorLine = %q, want %q", got, want)
	}
	joined := &commandError{err: errors.Join(errors.New("a"), errors.New("b"))}
	if got := errorLine(joined); got != "keyctl: error: a; b" {
		t.Errorf("errorLine(joined) = %q", got)
	}
	if got := errorLine(errors.New("unknown flag: --x")); got != "keyctl: error: unknown flag: --x; hint: see 'keyctl --help' or 'keyctl COMMAND --help'" {
		t.Errorf("errorLine(cobra error) = %q", got)
	}
}

func TestParseDEK(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	hexs := strings.Repeat("ab", 32)
	for _, tt := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"raw", raw, true},
		{"raw with newline-looking last byte", append(bytes.Repeat([]byte{1}, 31), '\n'), true},
		{"hex", []byte(hexs), true},
		{"hex newline", []byte(hexs + "\n"), true},
		{"hex crlf", []byte(hexs + "\r\n"), true},
		{"hex upper", []byte(strings.ToUpper(hexs)), true},
		{"hex two newlines", []byte(hexs + "\n\n"), false},
		{"short", raw[:31], false},
		{"long raw", append(raw, 0), false},
		{"not hex", []byte(strings.Repeat("zz", 32)), false},
		{"empty", nil, false},
	} {
		d, err := parseDEK(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("%s: err = %v", tt.name, err)
			continue
		}
		if err != nil {
			if !errors.Is(err, core.ErrMalformed) {
				t.Errorf("%s: error does not wrap ErrMalformed: %v", tt.name, err)
			}
			if strings.Contains(err.Error(), "ab") && tt.name != "not hex" {
				t.Errorf("%s: error may reveal key bytes: %v", tt.name, err)
			}
			continue
		}
		if len(d) != core.DEKSize {
			t.Errorf("%s: %d bytes", tt.name, len(d))
		}
	}
}

func TestParseContext(t *testing.T) {
	ec, err := parseContext([]string{"a=1", "b=x=y", "c="})
	if err != nil {
		t.Fatal(err)
	}
	if ec["a"] != "1" || ec["b"] != "x=y" || ec["c"] != "" || len(ec) != 3 {
		t.Errorf("ec = %v", ec)
	}
	if ec, err := parseContext(nil); ec != nil || err != nil {
		t.Errorf("nil: %v, %v", ec, err)
	}
	for _, bad := range [][]string{{"noequals"}, {"=v"}, {"a=1", "a=2"}, {"k=\x01"}} {
		if _, err := parseContext(bad); !errors.Is(err, core.ErrMalformed) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := writeFileAtomic(p, []byte("one"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(p, []byte("two"), 0o600, false); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write without replace: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Fatalf("content %q after refused write", b)
	}
	if err := writeFileAtomic(p, []byte("three"), 0o640, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "three" {
		t.Fatalf("content %q", b)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", fi.Mode())
	}
	// Through a symlink, the target is replaced and the link kept.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(p, link); err != nil {
		t.Skip(err)
	}
	if err := writeFileAtomic(link, []byte("four"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&fs.ModeSymlink == 0 {
		t.Error("symlink replaced by a file")
	}
	if b, _ := os.ReadFile(p); string(b) != "four" {
		t.Errorf("target content %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("leftover files: %v", entries)
	}
	if err := writeFileAtomic(filepath.Join(dir, "nodir", "x"), nil, 0o600, false); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}

// runKeyctl runs keyctl in-process.
func runKeyctl(stdin []byte, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, bytes.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// checkOneErrorLine asserts that stderr is exactly one error line.
func checkOneErrorLine(t *testing.T, what, stderr string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "keyctl: error: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("%s: stderr is not one error line: %q", what, stderr)
	}
	if strings.Contains(stderr, "internal error") || strings.Contains(stderr, "panic") {
		t.Errorf("%s: panic: %q", what, stderr)
	}
}

func TestInspectDetect(t *testing.T) {
	for _, in := range []string{"", " ", "\n", "KCWK", "KCWK\x01", "keyctl-wk1:", "keyctl-wk1", "k", "\x01", "\x02abc", "A", "AQ", "keyctl-wk9:abc", "hello world", "\x00\x00\x00"} {
		_, err := inspect([]byte(in))
		if err == nil {
			t.Errorf("inspect(%q) succeeded", in)
			continue
		}
		if !core.IsInputError(err) {
			t.Errorf("inspect(%q): not an input error: %v", in, err)
		}
	}
}

func FuzzInspect(f *testing.F) {
	f.Add([]byte("keyctl-wk1:S0NXSwEBCWxvY2FsZmlsZQAFbG9jYWwAATEBADyXvINU8OfUGs5HsfpBAskeoWKuyhTFF5ew4hI89FFEKF3P6XrYei4iP5P2QbBxOH1QKev5WTIubWVQmgQ\n"))
	f.Add([]byte("AQpaGqU__BNy8pjQsh31cJ_eUmCE8kedRu0HcO7TZcX-2vmzMsQ"))
	f.Add([]byte("KCWK\x01\x01\x09localfile\x00\x05local\x00\x011\x01\x00\x01x"))
	f.Add([]byte{1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		res, err := inspect(in)
		if err != nil {
			if !core.IsInputError(err) {
				t.Fatalf("not an input error: %v", err)
			}
			return
		}
		if res.Kind != "wrapped-key" && res.Kind != "field-ciphertext" {
			t.Fatalf("kind %q", res.Kind)
		}
		code, _, stderr := runKeyctl(in, "inspect")
		if code != 0 {
			t.Fatalf("keyctl inspect: exit %d: %s", code, stderr)
		}
	})
}

// FuzzUnwrap feeds arbitrary input to `keyctl unwrap` with a real key file:
// it must exit 2 with one error line, or unwrap (never, in practice).
func FuzzUnwrap(f *testing.F) {
	dir := f.TempDir()
	code, _, stderr := runKeyctl(nil, "init", "--dir", dir)
	if code != 0 {
		f.Fatalf("init: %s", stderr)
	}
	cfg := filepath.Join(dir, "keyctl.hcl")
	code, wk, stderr := runKeyctl(nil, "-c", cfg, "wrap")
	if code != 0 {
		f.Fatalf("wrap: %s", stderr)
	}
	f.Add([]byte(wk))
	f.Add([]byte(wk[:len(wk)-5]))
	f.Add([]byte("keyctl-wk1:AAAA"))
	f.Add([]byte("KCWK\x01\x01"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if bytes.Equal(in, []byte(wk)) {
			return
		}
		code, stdout, stderr := runKeyctl(in, "-c", cfg, "unwrap", "--reveal")
		if code == 0 {
			// Only a valid record under this KEK can unwrap; the fuzzer
			// will not forge one, but a re-encoding of the seed might.
			if len(strings.TrimSpace(stdout)) != 64 {
				t.Fatalf("exit 0 with output %q", stdout)
			}
			return
		}
		if code != 2 {
			t.Fatalf("exit %d, want 2: %s", code, stderr)
		}
		checkOneErrorLine(t, "unwrap", stderr)
	})
}

// failingWriter accepts nothing, like stdout on a full disk.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// TestLostOutputFails: output that cannot be written makes keyctl exit 1, so
// a script never goes on without the wrapped keys or plaintext it asked for.
func TestLostOutputFails(t *testing.T) {
	dir := t.TempDir()
	var stderr bytes.Buffer
	if code := run([]string{"init", "--dir", dir}, nil, io.Discard, &stderr); code != 0 {
		t.Fatalf("init: %d %s", code, stderr.String())
	}
	cfg := filepath.Join(dir, "keyctl.hcl")
	for _, args := range [][]string{
		{"-c", cfg, "wrap"},
		{"-c", cfg, "--json", "wrap"},
		{"-c", cfg, "encrypt", "--ad", "x", "value"},
		{"version"},
	} {
		stderr.Reset()
		code := run(args, strings.NewReader(""), failingWriter{}, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "writing standard output") {
			t.Errorf("%v with a failing stdout: exit %d, stderr %q", args, code, stderr.String())
		}
	}
}

// TestConcurrentKeysetRotate: keyctl processes changing one keyset at once
// must not lose each other's DEKs (the keyset file is locked while changed).
func TestConcurrentKeysetRotate(t *testing.T) {
	dir := t.TempDir()
	if code := run([]string{"init", "--dir", dir}, nil, io.Discard, io.Discard); code != 0 {
		t.Fatal("init failed")
	}
	cfg := filepath.Join(dir, "keyctl.hcl")
	const n = 8
	errs := make(chan string, n)
	for range n {
		go func() {
			var stderr bytes.Buffer
			if code := run([]string{"-c", cfg, "keyset", "rotate"}, nil, io.Discard, &stderr); code != 0 {
				errs <- stderr.String()
				return
			}
			errs <- ""
		}()
	}
	for range n {
		if e := <-errs; e != "" {
			t.Fatal(e)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "keyset.json"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := core.ParseKeyset(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.DEKs) != n+1 {
		t.Fatalf("keyset holds %d DEKs after %d concurrent rotations from 1, want %d", len(ks.DEKs), n, n+1)
	}
}
