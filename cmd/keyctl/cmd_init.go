package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

const (
	initKeyFile = "kek.json"
	initKeyset  = "keyset.json"
)

var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// starterConfig is the keyctl.hcl that init writes.
func starterConfig(passphraseEnv string) string {
	pe := `  # passphrase_env = "KEYCTL_PASSPHRASE"  # for a passphrase-protected key file`
	if passphraseEnv != "" {
		pe = fmt.Sprintf("  # The key file is passphrase-protected; keyctl reads the passphrase\n  # from this environment variable (or prompts on a terminal).\n  passphrase_env = %q", passphraseEnv)
	}
	return `# keyctl configuration, written by "keyctl init".
# Every block and attribute is described in config.hcl.example and docs/config.md
# of the keyctl repository. Relative paths resolve against this file's directory.

# The local key file holding the KEK (master key) versions. Keep it mode 0600.
provider "localfile" "local" {
  key_file = "` + initKeyFile + `"
` + pe + `
}

# New DEKs are wrapped by the primary provider; decrypt_only providers only unwrap.
keyring {
  primary      = "local"
  decrypt_only = []
}

# The keyset: the wrapped DEKs used by "keyctl encrypt" and "keyctl decrypt".
keyset {
  file = "` + initKeyset + `"
}
`
}

type initResult struct {
	Dir        string `json:"dir"`
	KeyFile    string `json:"key_file"`
	Keyset     string `json:"keyset"`
	Config     string `json:"config"`
	KeyID      string `json:"key_id"`
	KEKVersion string `json:"kek_version"`
	DEKID      string `json:"dek_id"`
	Protected  bool   `json:"passphrase_protected"`
}

func (a *app) initCommand() *cobra.Command {
	var dir, keyID, passEnv string
	var prompt bool
	c := &cobra.Command{
		Use:   "init [--dir DIR] [--key-id ID] [--passphrase-env VAR | --passphrase-prompt]",
		Short: "Create a local key file, a keyset and a starter keyctl.hcl",
		Long: `Create, in DIR (default: the current directory):

  kek.json     a local key file holding KEK version 1 (mode 0600);
  keyset.json  a keyset with one primary DEK, wrapped by that KEK (mode 0600);
  keyctl.hcl   a configuration using both.

With --passphrase-env VAR the key file is protected by the passphrase held in
the environment variable VAR, and keyctl.hcl names VAR in passphrase_env.
With --passphrase-prompt the passphrase is typed on the terminal (twice), and
keyctl asks for it again on the terminal whenever it opens the key file.
init never overwrites a file: if any of the three exists it does nothing and
exits with status 2.`,
		Example: `  keyctl init --dir ./keys
  KEYCTL_PASSPHRASE=... keyctl init --passphrase-env KEYCTL_PASSPHRASE`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			return a.runInit(dir, keyID, passEnv, prompt)
		}),
	}
	c.Flags().StringVar(&dir, "dir", ".", "directory to create the files in (created if missing)")
	c.Flags().StringVar(&keyID, "key-id", "", "KEK id written in every wrapped key (default: local-<8 random hex digits>, unique per init)")
	c.Flags().StringVar(&passEnv, "passphrase-env", "", "protect the key file with the passphrase held in this environment variable")
	c.Flags().BoolVar(&prompt, "passphrase-prompt", false, "protect the key file with a passphrase typed on the terminal (asked twice)")
	_ = c.MarkFlagDirname("dir")
	return c
}

func (a *app) runInit(dir, keyID, passEnv string, prompt bool) (err error) {
	var pass []byte
	if prompt && passEnv != "" {
		return usagef("--passphrase-prompt and --passphrase-env: choose one")
	}
	if prompt {
		fd, ok := a.terminalStdin()
		if !ok {
			return withHint(usagef("--passphrase-prompt needs a terminal on stdin"), "use --passphrase-env VAR in scripts")
		}
		var p1, p2 []byte
		fmt.Fprint(a.stderr, "Passphrase for the new key file: ")
		p1, err = term.ReadPassword(fd)
		fmt.Fprintln(a.stderr)
		if err == nil {
			fmt.Fprint(a.stderr, "Same passphrase again: ")
			p2, err = term.ReadPassword(fd)
			fmt.Fprintln(a.stderr)
		}
		defer clear(p1)
		defer clear(p2)
		if err != nil {
			return fmt.Errorf("init: read passphrase from the terminal: %w", err)
		}
		if len(p1) == 0 {
			return usagef("init: empty passphrase")
		}
		if !bytes.Equal(p1, p2) {
			return usagef("init: the two passphrases differ")
		}
		pass = p1
	}
	if passEnv != "" {
		if !envVarName.MatchString(passEnv) {
			return usagef("--passphrase-env %q: want the name of an environment variable, not the passphrase", passEnv)
		}
		v, ok := a.getenv(passEnv)
		if !ok || v == "" {
			return withHint(usagef("--passphrase-env %s: the variable is not set or empty", passEnv),
				fmt.Sprintf("export %s=<passphrase> first", passEnv))
		}
		pass = []byte(v)
		defer clear(pass)
	}
	if keyID == "" {
		// A unique id per key file: wrapped keys from another init are then
		// reported as foreign (no provider) rather than as tampered, and
		// two key files can share a keyring.
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("init: key id: %w", err)
		}
		keyID = fmt.Sprintf("local-%x", b)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("init: %v", pathErr(err))
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	keyPath := filepath.Join(absDir, initKeyFile)
	ksPath := filepath.Join(absDir, initKeyset)
	cfgPath := filepath.Join(absDir, config.DefaultFile)
	var existing []string
	for _, p := range []string{keyPath, ksPath, cfgPath} {
		if _, err := os.Lstat(p); err == nil {
			existing = append(existing, p)
		}
	}
	if len(existing) > 0 {
		return withHint(fmt.Errorf("init: %v already exists; refusing to overwrite: %w", existing, os.ErrExist),
			"init creates a fresh setup; use another --dir, or remove the files if you are sure nothing depends on them")
	}

	// Remove what this run created if a later step fails: nothing can have
	// been encrypted under it yet.
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				_ = os.Remove(p)
			}
		}
	}()

	prov, err := localfile.Create(keyPath, localfile.CreateOptions{KeyID: keyID, Passphrase: pass})
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return existsError(keyPath, "")
		}
		return fmt.Errorf("init: %w", err)
	}
	created = append(created, keyPath)
	ring, err := core.NewKeyring(prov)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	ks := core.NewKeyset()
	id, err := ks.AddDEK(a.ctx, ring, time.Now())
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	data, err := ks.Marshal()
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := writeNew(ksPath, data, 0o600, false, ""); err != nil {
		return err
	}
	created = append(created, ksPath)
	if err := writeNew(cfgPath, []byte(starterConfig(passEnv)), 0o644, false, ""); err != nil {
		return err
	}
	created = append(created, cfgPath)
	ver, err := prov.CurrentVersion(a.ctx)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}

	res := initResult{
		Dir: absDir, KeyFile: keyPath, Keyset: ksPath, Config: cfgPath,
		KeyID: keyID, KEKVersion: ver, DEKID: fmt.Sprintf("%08x", id), Protected: pass != nil,
	}
	if a.jsonOut {
		a.emitJSON(res)
		return nil
	}
	prot := ""
	if pass != nil {
		prot = fmt.Sprintf(", protected by the passphrase in $%s", passEnv)
	}
	a.printf("created %s (KEK %q version %s%s)\n", keyPath, keyID, ver, prot)
	a.printf("created %s (primary DEK %s)\n", ksPath, res.DEKID)
	a.printf("created %s\n", cfgPath)
	return nil
}
