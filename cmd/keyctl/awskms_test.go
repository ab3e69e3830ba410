package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/awskms/awskmstest"
)

// kmsEnv is a directory with a local key file (kek.json) and a local-kms
// emulator holding key A (also named by alias/app-data) and key B, whose
// credentials and region are in this process's environment, so that the
// awskms plugin processes keyctl starts find them through the SDK's
// default chain.
type kmsEnv struct {
	dir          string
	emu          *awskmstest.Emulator
	keyA, keyB   string
	arnA, arnB   string
	aliasA       string
	localKeyFile string
}

func newKMSEnv(t *testing.T) *kmsEnv {
	t.Helper()
	k := &kmsEnv{dir: t.TempDir(), keyA: awskmstest.NewKeyID(), keyB: awskmstest.NewKeyID(), aliasA: "alias/app-data"}
	k.arnA, k.arnB = awskmstest.KeyARN(k.keyA), awskmstest.KeyARN(k.keyB)
	k.emu = awskmstest.Start(t, awskmstest.Seed{
		Keys:    []awskmstest.Key{{ID: k.keyA}, {ID: k.keyB}},
		Aliases: []awskmstest.Alias{{Name: k.aliasA, TargetKeyID: k.keyA}},
	})
	for _, kv := range k.emu.Env() {
		name, v, _ := strings.Cut(kv, "=")
		t.Setenv(name, v)
	}
	t.Setenv("KEYCTL_CONFIG", "")
	if code, _, stderr := runKeyctl(nil, "init", "--dir", k.dir, "--key-id", "local"); code != 0 {
		t.Fatalf("keyctl init: %s", stderr)
	}
	k.localKeyFile = filepath.Join(k.dir, "kek.json")
	return k
}

// config writes a keyctl.hcl with a block for the primary and each
// decrypt-only provider (and no other), and returns its path. Provider
// names: "kms" (alias of key A, region from AWS_REGION), "kms2" (key B by
// its id, region given), "local" (the key file).
func (k *kmsEnv) config(t *testing.T, primary string, decryptOnly ...string) string {
	t.Helper()
	blocks := map[string]string{
		"kms":   fmt.Sprintf("provider \"awskms\" \"kms\" {\n  key_id   = %q\n  endpoint = %q\n}\n", k.aliasA, k.emu.Endpoint),
		"kms2":  fmt.Sprintf("provider \"awskms\" \"kms2\" {\n  key_id   = %q\n  region   = %q\n  endpoint = %q\n}\n", k.keyB, awskmstest.Region, k.emu.Endpoint),
		"local": "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n}\n",
	}
	var b strings.Builder
	for _, n := range append([]string{primary}, decryptOnly...) {
		b.WriteString(blocks[n])
	}
	q := make([]string, len(decryptOnly))
	for i, n := range decryptOnly {
		q[i] = fmt.Sprintf("%q", n)
	}
	fmt.Fprintf(&b, "keyring {\n  primary      = %q\n  decrypt_only = [%s]\n}\nkeyset {\n  file = \"keyset.json\"\n}\n", primary, strings.Join(q, ", "))
	name := filepath.Join(k.dir, "keyctl-"+strings.Join(append([]string{primary}, decryptOnly...), "-")+".hcl")
	if err := os.WriteFile(name, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// kmsKeyctl runs keyctl and fails the test unless it exits 0.
func kmsKeyctl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	code, stdout, stderr := runKeyctl(stdin, args...)
	if code != 0 {
		t.Fatalf("keyctl %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

// kmsKeyctlFails runs keyctl, which must exit with want and one error line
// on stderr; it returns that line.
func kmsKeyctlFails(t *testing.T, want int, stdin []byte, args ...string) string {
	t.Helper()
	code, stdout, stderr := runKeyctl(stdin, args...)
	if code != want {
		t.Fatalf("keyctl %s: exit %d, want %d; stdout %q, stderr %q", strings.Join(args, " "), code, want, stdout, stderr)
	}
	checkOneErrorLine(t, "keyctl "+strings.Join(args, " "), stderr)
	if stdout != "" {
		t.Errorf("keyctl %s: failed but printed %q", strings.Join(args, " "), stdout)
	}
	return stderr
}

// kmsUnwrap returns the hex DEK of a wrapped-key file.
func kmsUnwrap(t *testing.T, cfg, file string, ctxPairs ...string) string {
	t.Helper()
	args := []string{"-c", cfg, "unwrap", file, "--reveal"}
	for _, p := range ctxPairs {
		args = append(args, "--context", p)
	}
	return strings.TrimSpace(kmsKeyctl(t, nil, args...))
}

// kmsStanzas returns the stanzas of a wrapped-key file, "provider key-id
// version" each.
func kmsStanzas(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	wk, err := core.ParseWrappedKey(b)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	out := make([]string, len(wk.Stanzas))
	for i, s := range wk.Stanzas {
		out[i] = s.Provider + " " + s.KeyID + " " + s.KeyVersion
	}
	return out
}

func kmsWantStanzas(t *testing.T, file string, want ...string) {
	t.Helper()
	got := kmsStanzas(t, file)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s holds wraps\n  %s\nwant\n  %s", filepath.Base(file), strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// kmsDEKFile writes a fresh DEK as hex to dir/name and returns the path and
// the hex.
func kmsDEKFile(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	d, err := core.NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	h := hex.EncodeToString(d)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(h+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, h
}

// TestAWSKMSWrapUnwrapRewrap: keyctl wrap, unwrap and rewrap with awskms
// providers from keyctl.hcl, run as plugin subprocesses; a rewrap between
// two KMS keys goes through ReEncrypt.
func TestAWSKMSWrapUnwrapRewrap(t *testing.T) {
	k := newKMSEnv(t)
	cfg := k.config(t, "kms")

	// A generated DEK (KMS GenerateDataKey) and a given one.
	gen := filepath.Join(k.dir, "gen.wk")
	kmsKeyctl(t, nil, "-c", cfg, "wrap", "--context", "app=billing", "--out", gen)
	kmsWantStanzas(t, gen, "awskms "+k.aliasA+" "+k.arnA)
	if h := kmsUnwrap(t, cfg, gen, "app=billing"); len(h) != 64 {
		t.Fatalf("unwrap: %q", h)
	}
	dekFile, dekHex := kmsDEKFile(t, k.dir, "dek.hex")
	out := kmsKeyctl(t, nil, "-c", cfg, "--json", "wrap", "--dek-file", dekFile, "--context", "app=billing")
	var res wrapResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("wrap --json: %v: %q", err, out)
	}
	if len(res.Wraps) != 1 || res.Wraps[0].Provider != "awskms" || res.Wraps[0].KeyVersion != k.arnA || res.Wraps[0].Algorithm != "aws-kms" || res.Generated {
		t.Fatalf("wrap --json: %+v", res)
	}
	given := filepath.Join(k.dir, "given.wk")
	if err := os.WriteFile(given, []byte(res.WrappedKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := kmsUnwrap(t, cfg, given, "app=billing"); got != dekHex {
		t.Fatal("unwrap gave another DEK")
	}
	// The context is bound: KMS refuses another one (input error, 2).
	kmsKeyctlFails(t, 2, nil, "-c", cfg, "unwrap", given, "--reveal", "--context", "app=payroll")

	// Rewrap onto the same key: the version is the key ARN, already current.
	if out := kmsKeyctl(t, nil, "-c", cfg, "rewrap", "--context", "app=billing", given); !strings.Contains(out, "already current 1") {
		t.Fatalf("rewrap onto the same key: %q", out)
	}
	// Rewrap onto key B (another provider block): the new wrap comes
	// first, the wrap under key A is kept, and key B alone opens it.
	// (core's Rewrapper opens the DEK with key A's provider and wraps it
	// with key B's; KMS ReEncrypt through the plugin is covered in
	// plugin/builtin.)
	cfgB := k.config(t, "kms2", "kms")
	if out := kmsKeyctl(t, nil, "-c", cfgB, "rewrap", "--context", "app=billing", given); !strings.Contains(out, "rewrapped 1") {
		t.Fatalf("rewrap onto key B: %q", out)
	}
	kmsWantStanzas(t, given, "awskms "+k.keyB+" "+k.arnB, "awskms "+k.aliasA+" "+k.arnA)
	if got := kmsUnwrap(t, k.config(t, "kms2"), given, "app=billing"); got != dekHex {
		t.Fatal("after the ReEncrypt rewrap, unwrap gave another DEK")
	}

	// Stdin mode, in batches through the plugin: wraps under key A move to
	// key B.
	var in bytes.Buffer
	for range 20 {
		b, err := os.ReadFile(gen)
		if err != nil {
			t.Fatal(err)
		}
		in.Write(b)
	}
	code, stdout, stderr := runKeyctl(in.Bytes(), "-c", cfgB, "rewrap", "--context", "app=billing")
	if code != 0 || strings.Count(stdout, "\n") != 20 || !strings.Contains(stderr, "rewrapped 20") {
		t.Fatalf("rewrap from stdin: exit %d, %d lines, stderr %q", code, strings.Count(stdout, "\n"), stderr)
	}
}

// TestAWSKMSLocalFileMigration moves DEKs between AWS KMS and the local-file
// provider in both directions with nothing but configuration edits.
func TestAWSKMSLocalFileMigration(t *testing.T) {
	k := newKMSEnv(t)
	kmsOnly, localOnly := k.config(t, "kms"), k.config(t, "local")
	toLocal, toKMS := k.config(t, "local", "kms"), k.config(t, "kms", "local")
	local := "localfile local 1"
	kmsA := "awskms " + k.aliasA + " " + k.arnA

	// AWS KMS -> local file.
	dekFile, dekHex := kmsDEKFile(t, k.dir, "dek.hex")
	f := filepath.Join(k.dir, "fromkms.wk")
	kmsKeyctl(t, nil, "-c", kmsOnly, "wrap", "--dek-file", dekFile, "--context", "tenant=7", "--out", f)
	kmsWantStanzas(t, f, kmsA)
	if out := kmsKeyctl(t, nil, "-c", toLocal, "rewrap", "--context", "tenant=7", f); !strings.Contains(out, "rewrapped 1") {
		t.Fatalf("rewrap to local: %q", out)
	}
	kmsWantStanzas(t, f, local, kmsA) // the KMS wrap is kept
	if got := kmsUnwrap(t, localOnly, f, "tenant=7"); got != dekHex {
		t.Fatal("after the move to the local file, unwrap without any awskms provider gave another DEK")
	}
	// ... and back: the KMS wrap is still there and current, so nothing to
	// do; with only KMS configured it unwraps.
	if out := kmsKeyctl(t, nil, "-c", toKMS, "rewrap", "--context", "tenant=7", f); !strings.Contains(out, "already current 1") {
		t.Fatalf("rewrap back to KMS: %q", out)
	}
	if got := kmsUnwrap(t, kmsOnly, f, "tenant=7"); got != dekHex {
		t.Fatal("back on KMS, unwrap gave another DEK")
	}

	// Local file -> AWS KMS -> local file, where each move makes a wrap.
	dekFile2, dekHex2 := kmsDEKFile(t, k.dir, "dek2.hex")
	g := filepath.Join(k.dir, "fromlocal.wk")
	kmsKeyctl(t, nil, "-c", localOnly, "wrap", "--dek-file", dekFile2, "--context", "tenant=8", "--out", g)
	kmsWantStanzas(t, g, local)
	if out := kmsKeyctl(t, nil, "-c", toKMS, "rewrap", "--context", "tenant=8", g); !strings.Contains(out, "rewrapped 1") {
		t.Fatalf("rewrap to KMS: %q", out)
	}
	kmsWantStanzas(t, g, kmsA, local)
	if got := kmsUnwrap(t, kmsOnly, g, "tenant=8"); got != dekHex2 {
		t.Fatal("after the move to KMS, unwrap without the local file gave another DEK")
	}
	// The local KEK rotates (as when the old one is retired): moving back
	// wraps under its new version, opening the DEK from KMS or the old wrap.
	kmsKeyctl(t, nil, "-c", localOnly, "rotate")
	if out := kmsKeyctl(t, nil, "-c", toLocal, "rewrap", "--context", "tenant=8", g); !strings.Contains(out, "rewrapped 1") {
		t.Fatalf("rewrap back to local: %q", out)
	}
	if s := kmsStanzas(t, g); len(s) < 2 || s[0] != "localfile local 2" || !strings.Contains(strings.Join(s, "\n"), kmsA) {
		t.Fatalf("after the move back, wraps %q", s)
	}
	if got := kmsUnwrap(t, localOnly, g, "tenant=8"); got != dekHex2 {
		t.Fatal("back on the local file, unwrap gave another DEK")
	}
}

// TestAWSKMSImport adopts CiphertextBlobs made with bare SDK calls outside
// keyctl, and refuses what it cannot verify.
func TestAWSKMSImport(t *testing.T) {
	k := newKMSEnv(t)
	cfg := k.config(t, "kms", "local")
	ctx := context.Background()
	c := k.emu.Client()

	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(3*i + 1)
	}
	ec := map[string]string{"service": "billing", "env": "prod"}
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k.keyA), Plaintext: raw, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	gen, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(k.aliasA), KeySpec: types.DataKeySpecAes256})
	if err != nil {
		t.Fatal(err)
	}
	kmsA := "awskms " + k.aliasA + " " + k.arnA

	t.Run("Encrypt with context, raw file", func(t *testing.T) {
		blob := filepath.Join(k.dir, "enc.bin")
		if err := os.WriteFile(blob, enc.CiphertextBlob, 0o600); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(k.dir, "enc.wk")
		_, stderr := kmsKeyctlOK(t, nil, "-c", cfg, "import", blob, "--provider", "kms", "--context", "service=billing", "--context", "env=prod", "--out", out)
		if !strings.Contains(stderr, "wrote "+out) {
			t.Errorf("stderr %q", stderr)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("--out: %v %v", fi, err)
		}
		kmsWantStanzas(t, out, kmsA)
		if got := kmsUnwrap(t, cfg, out, "service=billing", "env=prod"); got != hex.EncodeToString(raw) {
			t.Fatal("keyctl unwrap of the imported blob gave another DEK")
		}
		// Without the context, keyctl unwrap is refused like KMS Decrypt.
		kmsKeyctlFails(t, 2, nil, "-c", cfg, "unwrap", out, "--reveal")
		// From then on it moves to any provider: here the local file.
		kmsKeyctl(t, nil, "-c", k.config(t, "local", "kms"), "rewrap", out, "--context", "service=billing", "--context", "env=prod")
		if got := kmsUnwrap(t, k.config(t, "local"), out, "service=billing", "env=prod"); got != hex.EncodeToString(raw) {
			t.Fatal("the imported DEK, rewrapped to the local file, unwraps to another DEK")
		}
		// --out never replaces a file.
		msg := kmsKeyctlFails(t, 2, nil, "-c", cfg, "import", blob, "--context", "service=billing", "--context", "env=prod", "--out", out)
		if !strings.Contains(msg, "already exists") {
			t.Errorf("existing --out: %q", msg)
		}
	})

	t.Run("GenerateDataKey, base64 on stdin", func(t *testing.T) {
		b64 := base64.StdEncoding.EncodeToString(gen.CiphertextBlob) + "\n"
		// Default provider: the keyring primary ("kms").
		stdout := kmsKeyctl(t, []byte(b64), "-c", cfg, "--json", "import")
		var res importResult
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("import --json: %v: %q", err, stdout)
		}
		if res.Provider != "kms" || res.Encoding != "base64" || len(res.Wraps) != 1 || res.Wraps[0].KeyVersion != k.arnA || res.Wraps[0].KeyID != k.aliasA {
			t.Fatalf("import --json: %+v", res)
		}
		wk, err := core.ParseWrappedKey([]byte(res.WrappedKey))
		if err != nil || !bytes.Equal(wk.Stanzas[0].Data, gen.CiphertextBlob) {
			t.Fatalf("the wrapped key does not hold the blob unchanged: %v", err)
		}
		// The text form, as printed without --json, unwraps from stdin.
		text := kmsKeyctl(t, []byte(b64), "-c", cfg, "import")
		if !strings.HasPrefix(text, "keyctl-wk1:") || strings.Count(text, "\n") != 1 {
			t.Fatalf("import output %q", text)
		}
		got := strings.TrimSpace(kmsKeyctl(t, []byte(text), "-c", cfg, "unwrap", "--reveal"))
		if got != hex.EncodeToString(gen.Plaintext) {
			t.Fatal("keyctl unwrap of the imported GenerateDataKey blob gave another DEK")
		}
		// Raw bytes on stdin work too, and the URL alphabet.
		if out := kmsKeyctl(t, gen.CiphertextBlob, "-c", cfg, "import", "--encoding", "raw"); out != text {
			t.Fatalf("raw import: %q", out)
		}
		kmsKeyctl(t, []byte(base64.RawURLEncoding.EncodeToString(gen.CiphertextBlob)), "-c", cfg, "import")
	})

	t.Run("refused", func(t *testing.T) {
		tampered := bytes.Clone(enc.CiphertextBlob)
		tampered[len(tampered)-5] ^= 0x01
		gen128, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(k.keyA), KeySpec: types.DataKeySpecAes128})
		if err != nil {
			t.Fatal(err)
		}
		underB, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k.keyB), Plaintext: raw})
		if err != nil {
			t.Fatal(err)
		}
		wkFile := filepath.Join(k.dir, "wrapped.wk")
		kmsKeyctl(t, nil, "-c", cfg, "wrap", "--out", wkFile)
		wkText, _ := os.ReadFile(wkFile)
		ctxArgs := []string{"--context", "service=billing", "--context", "env=prod"}
		for _, tc := range []struct {
			name  string
			stdin []byte
			args  []string
			want  int
			msg   string
		}{
			{"tampered blob", tampered, ctxArgs, 2, "cannot unwrap"},
			{"tampered blob, base64", []byte(base64.StdEncoding.EncodeToString(tampered)), ctxArgs, 2, "cannot unwrap"},
			{"wrong context", enc.CiphertextBlob, []string{"--context", "service=payroll", "--context", "env=prod"}, 2, "cannot unwrap"},
			{"missing context", enc.CiphertextBlob, nil, 2, "cannot unwrap"},
			{"blob under another key", underB.CiphertextBlob, nil, 2, "cannot unwrap"},
			{"16-byte data key", gen128.CiphertextBlob, nil, 2, "32"},
			{"not an awskms provider", enc.CiphertextBlob, append([]string{"--provider", "local"}, ctxArgs...), 2, "type localfile"},
			{"unknown provider", enc.CiphertextBlob, []string{"--provider", "nope"}, 2, `no provider named "nope"`},
			{"a keyctl wrapped key", wkText, nil, 2, "already a keyctl wrapped key"},
			{"empty input", nil, nil, 2, "empty"},
			{"not base64", []byte("not base64!"), []string{"--encoding", "base64"}, 2, "not base64"},
			{"bad encoding", enc.CiphertextBlob, []string{"--encoding", "hex"}, 2, "--encoding"},
			{"oversized", bytes.Repeat([]byte{1}, 20000), nil, 2, "over"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "out.wk")
				args := append([]string{"-c", cfg, "import", "--out", out}, tc.args...)
				msg := kmsKeyctlFails(t, tc.want, tc.stdin, args...)
				t.Log(msg)
				if !strings.Contains(msg, tc.msg) {
					t.Errorf("error %q does not say %q", msg, tc.msg)
				}
				if _, err := os.Stat(out); err == nil {
					t.Error("a refused import wrote its --out file")
				}
			})
		}
	})
}

// kmsKeyctlOK is kmsKeyctl returning stderr too.
func kmsKeyctlOK(t *testing.T, stdin []byte, args ...string) (string, string) {
	t.Helper()
	code, stdout, stderr := runKeyctl(stdin, args...)
	if code != 0 {
		t.Fatalf("keyctl %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return stdout, stderr
}

// FuzzImportDecode feeds arbitrary input to the decoder of keyctl import:
// no panic, errors are input or usage errors, a result is never empty, and
// base64 of any blob decodes back to it.
func FuzzImportDecode(f *testing.F) {
	f.Add([]byte("AQICAHh4c2FtcGxl\n"), importAuto)
	f.Add([]byte{1, 2, 2, 0, 0x78, 0xff}, importRaw)
	f.Add([]byte("keyctl-wk1:abc"), importBase64)
	f.Add([]byte(" \n"), importAuto)
	f.Fuzz(func(t *testing.T, in []byte, encoding string) {
		switch encoding {
		case importAuto, importRaw, importBase64:
		default:
			encoding = importAuto
		}
		blob, enc, err := decodeBlob(in, encoding)
		if err != nil {
			if exitCode(&commandError{err: err}) != exitUsage {
				t.Fatalf("error is not an input error: %v", err)
			}
			return
		}
		if len(blob) == 0 || (enc != importRaw && enc != importBase64) {
			t.Fatalf("decodeBlob(%q, %s) = %q, %q", in, encoding, blob, enc)
		}
		if encoding == importRaw && !bytes.Equal(blob, in) {
			t.Fatal("--encoding raw changed the input")
		}
		if bytes.HasPrefix(bytes.TrimSpace(in), []byte("keyctl-wk")) {
			return
		}
		back, enc2, err := decodeBlob([]byte(base64.StdEncoding.EncodeToString(in)+"\n"), importAuto)
		if len(in) > 0 && !core.IsBinaryWrappedKey(in) && (err != nil || enc2 != importBase64 || !bytes.Equal(back, in)) {
			t.Fatalf("base64 of %q: %q, %s, %v", in, back, enc2, err)
		}
	})
}
