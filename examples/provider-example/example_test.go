package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/plugin"
)

const testKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
const otherKey = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"

// TestOnlyPluginAndCore checks that the example depends on no keyctl
// package other than plugin (and its generated code) and core: a
// third-party provider needs nothing else.
func TestOnlyPluginAndCore(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if !strings.HasPrefix(dep, "github.com/keyctl/keyctl/") {
			continue
		}
		switch strings.TrimPrefix(dep, "github.com/keyctl/keyctl/") {
		case "core", "plugin", "plugin/proto", "examples/provider-example":
		default:
			t.Errorf("the example imports %s", dep)
		}
	}
}

func TestConformanceInProcess(t *testing.T) {
	providertest.Run(t, providertest.Harness{
		New: func(t *testing.T) core.KeyProvider {
			p, err := New("conf", testKey)
			if err != nil {
				t.Fatal(err)
			}
			return p
		},
		Other: func(t *testing.T) core.KeyProvider {
			p, err := New("conf-other", otherKey)
			if err != nil {
				t.Fatal(err)
			}
			return p
		},
	})
}

var (
	buildOnce            sync.Once
	builtPlugin, builtCL string
	buildErr             error
	buildDir             string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// build compiles the example plugin and keyctl into a temporary directory,
// once per test run.
func build(t *testing.T) (pluginPath, keyctl string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "keyctl-example-")
		if buildErr != nil {
			return
		}
		builtPlugin = filepath.Join(buildDir, "keyctl-provider-example")
		builtCL = filepath.Join(buildDir, "keyctl")
		for _, b := range [][]string{{"-o", builtPlugin, "."}, {"-o", builtCL, "../../cmd/keyctl"}} {
			cmd := exec.Command("go", append([]string{"build"}, b...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %v: %v\n%s", b, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPlugin, builtCL
}

func sum(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestConformanceThroughPlugin(t *testing.T) {
	pluginPath, _ := build(t)
	checksum, _ := hex.DecodeString(sum(t, pluginPath))
	start := func(keyID, key string) func(t *testing.T) core.KeyProvider {
		return func(t *testing.T) core.KeyProvider {
			c, err := plugin.Start(context.Background(), plugin.ClientConfig{
				Name:     "ext",
				Type:     Type,
				Command:  func() *exec.Cmd { return exec.Command(pluginPath) },
				SHA256:   checksum,
				AutoMTLS: true,
				Values:   plugin.Values{"key_id": {Str: keyID}, "key": {Secret: []byte(key)}},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}
	}
	providertest.Run(t, providertest.Harness{New: start("conf", testKey), Other: start("conf-other", otherKey)})
}

// TestThroughKeyctl configures the example as a third-party provider of
// the keyctl CLI: wrap and unwrap through it, decrypt-only next to a
// localfile primary, and a binary whose checksum differs is refused.
func TestThroughKeyctl(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	pluginPath, keyctl := build(t)
	dir := t.TempDir()
	run := func(wantOK bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(keyctl, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "EXAMPLE_KEK_HEX="+testKey, "KEYCTL_CONFIG=")
		out, err := cmd.CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("keyctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	writeConfig := func(checksum string) {
		cfg := `provider "example" "ext" {
  plugin = "` + pluginPath + `"
  sha256 = "` + checksum + `"
  key_id = "demo"
  key    = env("EXAMPLE_KEK_HEX")
}
keyring {
  primary = "ext"
}
keyset {
  file = "keyset.json"
}
`
		if err := os.WriteFile(filepath.Join(dir, "keyctl.hcl"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(sum(t, pluginPath))
	if out := run(true, "config", "validate"); !strings.Contains(out, "ext (example)") {
		t.Fatalf("validate: %s", out)
	}
	run(true, "wrap", "--out", "a.wk", "--context", "app=demo")
	if out := run(true, "inspect", "a.wk"); !strings.Contains(out, "example") || !strings.Contains(out, "demo") {
		t.Fatalf("inspect: %s", out)
	}
	dek := run(true, "unwrap", "a.wk", "--context", "app=demo", "--reveal")
	if out := run(false, "unwrap", "a.wk", "--context", "app=other", "--reveal"); !strings.Contains(out, "cannot unwrap") {
		t.Fatalf("wrong context: %s", out)
	}
	if out := run(false, "rotate"); !strings.Contains(out, "not supported") {
		t.Fatalf("rotate: %s", out)
	}

	// A checksum that differs: refused, exit 2, before the plugin runs.
	writeConfig(strings.Repeat("0", 64))
	out := run(false, "unwrap", "a.wk", "--context", "app=demo", "--reveal")
	if !strings.Contains(out, "sha256") || strings.Contains(out, dek) {
		t.Fatalf("bad checksum: %s", out)
	}
	// A typo inside the plugin's block is caught against its schema.
	writeConfig(sum(t, pluginPath))
	cfg, _ := os.ReadFile(filepath.Join(dir, "keyctl.hcl"))
	os.WriteFile(filepath.Join(dir, "keyctl.hcl"), []byte(strings.Replace(string(cfg), "key_id", "keyid", 1)), 0o600)
	if out := run(false, "config", "validate"); !strings.Contains(out, "keyctl.hcl:4,3: Unsupported argument") {
		t.Fatalf("typo: %s", out)
	}
}
