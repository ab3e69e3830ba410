// Package awskmstest starts throwaway local-kms emulators for keyctl's tests.
//
// The emulator is the keyctl-localkms harness (module testenv/localkms in
// this repository), which serves local-kms's request handler on 127.0.0.1
// only. Each [Start] runs a fresh process with its data directory in a
// temporary folder, on a free loopback port, seeded with the keys and aliases
// of a [Seed], and stops it when the test ends. The emulator logs one line
// per request; those lines are kept in a file and printed only when the test
// fails.
//
// The harness binary is found through $KEYCTL_LOCALKMS or as keyctl-localkms
// on $PATH. When it is missing, tests are skipped with a message saying how
// to install it — except in CI (CI=true), where a missing emulator is a test
// failure.
//
// Tests outside this provider (the plugin bridge, the CLI) use it the same
// way: Start an emulator with a Seed, configure an awskms provider with
// Endpoint set to [Emulator.Endpoint], and give a provider subprocess the
// credentials and region of [Emulator.Env].
package awskmstest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// Account and Region are the account id and region the emulator puts in ARNs.
const (
	Account = "111122223333"
	Region  = "eu-west-2"
)

// BinaryEnv names the environment variable that may point at the harness binary.
const BinaryEnv = "KEYCTL_LOCALKMS"

// InstallHint says how to make the emulator available.
const InstallHint = "install the loopback local-kms harness with `(cd testenv/localkms && go install ./cmd/keyctl-localkms)` " +
	"(puts keyctl-localkms on $PATH via $GOBIN) or set " + BinaryEnv + " to its path"

// Key is a symmetric key to seed.
type Key struct {
	// ID is the key id (a UUID); the ARN is KeyARN(ID).
	ID string
	// BackingKeys are the key's versions, oldest first; nil means one fresh
	// random 32-byte key.
	BackingKeys [][]byte
	// NextRotation, if not zero, is when the emulator rotates the key (on
	// the first request that loads it after that time).
	NextRotation time.Time
}

// Alias maps an alias name ("alias/...") to a key id.
type Alias struct {
	Name, TargetKeyID string
}

// Seed lists what the emulator holds when it starts.
type Seed struct {
	Keys    []Key
	Aliases []Alias
}

// KeyARN returns the ARN the emulator gives the key id.
func KeyARN(id string) string { return "arn:aws:kms:" + Region + ":" + Account + ":key/" + id }

// NewKeyID returns a random UUID-shaped key id.
func NewKeyID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Emulator is a running emulator process.
type Emulator struct {
	// Endpoint is its base URL, "http://127.0.0.1:PORT".
	Endpoint string
	cmd      *exec.Cmd
	logPath  string
	done     chan error

	stopOnce sync.Once
	stopErr  error
}

// Binary returns the path of the harness binary, or "" when it is not
// installed.
func Binary() string {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p
	}
	p, err := exec.LookPath("keyctl-localkms")
	if err != nil {
		return ""
	}
	return p
}

// InCI reports whether the tests run in CI, where a missing emulator fails.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips tb (or fails it, in CI) when the harness is not installed,
// and returns the binary path otherwise.
func Require(tb testing.TB) string {
	tb.Helper()
	bin := Binary()
	if bin == "" {
		if InCI() {
			tb.Fatalf("local-kms emulator not found (CI=true, so this is a failure, not a skip): %s", InstallHint)
		}
		tb.Skipf("local-kms emulator not found, skipping; to run these tests, %s", InstallHint)
	}
	return bin
}

// Start runs a fresh emulator seeded with seed and stops it at the end of tb.
// Its log is printed if tb fails.
func Start(tb testing.TB, seed Seed) *Emulator {
	tb.Helper()
	bin := Require(tb)
	dir := tb.TempDir()
	e, err := StartProcess(bin, dir, seed)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.Stop(); err != nil {
			tb.Errorf("stop local-kms: %v", err)
		}
		if tb.Failed() {
			tb.Logf("local-kms log (%s):\n%s", e.Endpoint, e.Log())
		}
	})
	return e
}

// StartProcess runs the harness binary with its data directory, seed file
// and log under dir. The caller must call Stop. It is Start without testing
// (for TestMain).
func StartProcess(bin, dir string, seed Seed) (*Emulator, error) {
	seedPath := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seedPath, seed.yaml(), 0o600); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "local-kms.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-data", filepath.Join(dir, "data"),
		"-seed", seedPath, "-account", Account, "-region", Region)
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	e := &Emulator{cmd: cmd, logPath: logPath, done: make(chan error, 1)}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		for sc.Scan() { // drain; the harness prints nothing more
		}
	}()
	go func() { e.done <- cmd.Wait() }()
	select {
	case line, ok := <-lines:
		ep, found := strings.CutPrefix(line, "listening on ")
		if !ok || !found {
			_ = e.Stop()
			return nil, fmt.Errorf("local-kms did not start (first line %q); log:\n%s", line, e.Log())
		}
		e.Endpoint = ep
	case <-time.After(30 * time.Second):
		_ = e.Stop()
		return nil, fmt.Errorf("local-kms did not report its address within 30s; log:\n%s", e.Log())
	}
	return e, nil
}

// Stop terminates the emulator and waits for it.
func (e *Emulator) Stop() error {
	e.stopOnce.Do(func() {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case e.stopErr = <-e.done:
		case <-time.After(10 * time.Second):
			_ = e.cmd.Process.Kill()
			<-e.done
			e.stopErr = fmt.Errorf("local-kms ignored SIGTERM for 10s; killed")
		}
	})
	return e.stopErr
}

// Log returns what the emulator has logged so far.
func (e *Emulator) Log() string {
	b, err := os.ReadFile(e.logPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// AWSConfig returns an aws.Config for the emulator: its region and static
// dummy credentials (local-kms checks no signatures).
func (e *Emulator) AWSConfig() aws.Config {
	return aws.Config{
		Region:       Region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDLOCALKMS", "local-kms-secret", ""),
		BaseEndpoint: aws.String(e.Endpoint),
	}
}

// Env returns environment variables ("NAME=value") that let the SDK's
// default chain reach the emulator from a subprocess (a plugin, the CLI):
// dummy static credentials, the region, no shared config files and no
// instance metadata lookups. The endpoint still has to be configured
// (Config.Endpoint = e.Endpoint).
func (e *Emulator) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=AKIDLOCALKMS",
		"AWS_SECRET_ACCESS_KEY=local-kms-secret",
		"AWS_SESSION_TOKEN=",
		"AWS_REGION=" + Region,
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client returns a plain KMS client for the emulator, for test setup and for
// baseline benchmarks.
func (e *Emulator) Client() *kms.Client {
	return kms.NewFromConfig(e.AWSConfig())
}

// CreateKey creates a fresh symmetric key and returns its ARN.
func (e *Emulator) CreateKey(tb testing.TB) string {
	tb.Helper()
	out, err := e.Client().CreateKey(context.Background(), &kms.CreateKeyInput{
		KeySpec:  types.KeySpecSymmetricDefault,
		KeyUsage: types.KeyUsageTypeEncryptDecrypt,
	})
	if err != nil {
		tb.Fatalf("local-kms CreateKey: %v", err)
	}
	return aws.ToString(out.KeyMetadata.Arn)
}

// BlobKeyVersion returns the backing-key index that local-kms wrote into one
// of its own symmetric ciphertext blobs (a length-prefixed key ARN, then a
// little-endian uint32 version). Tests use it to prove a rotation happened;
// real AWS KMS blobs have another layout.
func BlobKeyVersion(blob []byte) (uint32, error) {
	if len(blob) < 1 || len(blob) < 1+int(blob[0])+4+1 {
		return 0, fmt.Errorf("not a local-kms ciphertext blob (%d bytes)", len(blob))
	}
	n := int(blob[0])
	return binary.LittleEndian.Uint32(blob[1+n : 1+n+4]), nil
}

func (s Seed) yaml() []byte {
	var b bytes.Buffer
	b.WriteString("Keys:\n  Symmetric:\n    Aes:\n")
	for _, k := range s.Keys {
		fmt.Fprintf(&b, "      - Metadata:\n          KeyId: %q\n        BackingKeys:\n", k.ID)
		bks := k.BackingKeys
		if len(bks) == 0 {
			r := make([]byte, 32)
			_, _ = rand.Read(r)
			bks = [][]byte{r}
		}
		for _, bk := range bks {
			fmt.Fprintf(&b, "          - %q\n", hex.EncodeToString(bk))
		}
		if !k.NextRotation.IsZero() {
			fmt.Fprintf(&b, "        NextKeyRotation: %s\n", k.NextRotation.UTC().Format(time.RFC3339Nano))
		}
	}
	b.WriteString("Aliases:\n")
	for _, a := range s.Aliases {
		fmt.Fprintf(&b, "  - AliasName: %q\n    TargetKeyId: %q\n", a.Name, a.TargetKeyID)
	}
	return b.Bytes()
}
