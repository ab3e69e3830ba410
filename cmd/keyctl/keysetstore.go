package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store"
	"github.com/keyctl/keyctl/store/sqlstore"
)

// keysetStore opens the keyset store named by the keyset block of the
// configuration: a JSON file, a SQLite database or a PostgreSQL database.
// The caller closes it.
func (a *app) keysetStore() (core.KeysetStore, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	return a.openKeysetStore(cfg.Keyset, cfg.Path)
}

// openKeysetStore opens the store described by ks; cfgPath is named in hints.
func (a *app) openKeysetStore(ks config.Keyset, cfgPath string) (core.KeysetStore, error) {
	opts := sqlstore.Options{Keyset: ks.Name}
	switch ks.Kind() {
	case "sqlite":
		s, err := sqlstore.OpenSQLite(a.ctx, ks.SQLite, opts)
		if err != nil {
			return nil, fmt.Errorf("keyset: %w", err)
		}
		return s, nil
	case "postgres":
		url, ok := a.getenv(ks.PostgresEnv)
		if !ok || url == "" {
			return nil, withHint(usagef("keyset: the PostgreSQL URL variable %s is not set or empty", ks.PostgresEnv),
				fmt.Sprintf("export %s=postgres://USER@HOST/DB (the keyset block of %s names it)", ks.PostgresEnv, cfgPath))
		}
		s, err := sqlstore.OpenPostgres(a.ctx, url, opts)
		if err != nil {
			return nil, fmt.Errorf("keyset: %w", err)
		}
		return s, nil
	default:
		s, err := store.OpenFile(ks.File)
		if err != nil {
			return nil, fmt.Errorf("keyset: %w", err)
		}
		return s, nil
	}
}

// keysetMissing is the error for a keyset that holds no DEK yet (a file
// store whose file does not exist, an empty SQL keyset).
func (a *app) keysetMissing(cfg *config.Config) error {
	if cfg.Keyset.Kind() == "file" {
		return withHint(usagef("keyset %s does not exist", cfg.Keyset.File),
			"run `keyctl init` to create one, or fix the keyset block of "+cfg.Path)
	}
	return withHint(usagef("keyset %s holds no DEK yet", cfg.Keyset),
		"run `keyctl keyset rotate` to create its first DEK, or fix the keyset block of "+cfg.Path)
}

// withKeysetStore opens the configured keyset store, runs fn on it and
// closes it. where describes the store for output; errors from fn get the
// chmod hint of keysetError.
func (a *app) withKeysetStore(fn func(cfg *config.Config, st core.KeysetStore) error) (where string, err error) {
	cfg, err := a.config()
	if err != nil {
		return "", err
	}
	where = cfg.Keyset.String()
	st, err := a.openKeysetStore(cfg.Keyset, cfg.Path)
	if err != nil {
		return where, err
	}
	defer st.Close()
	return where, keysetError(cfg, fn(cfg, st))
}

// loadKeyset reads the configured keyset; it is an error when the keyset
// holds no DEK. where describes the store for output.
func (a *app) loadKeyset() (ks *core.Keyset, where string, err error) {
	where, err = a.withKeysetStore(func(cfg *config.Config, st core.KeysetStore) error {
		if cfg.Keyset.Kind() == "file" {
			if _, err := os.Stat(cfg.Keyset.File); errors.Is(err, os.ErrNotExist) {
				return a.keysetMissing(cfg)
			}
		}
		var err error
		if ks, err = st.Load(a.ctx); err != nil {
			return err
		}
		if len(ks.DEKs) == 0 {
			return a.keysetMissing(cfg)
		}
		return nil
	})
	if err != nil {
		return nil, where, err
	}
	return ks, where, nil
}

// keysetError adds the chmod hint to a refused keyset file.
func keysetError(cfg *config.Config, err error) error {
	if errors.Is(err, core.ErrPermission) && cfg.Keyset.Kind() == "file" {
		return withHint(err, "chmod 600 "+cfg.Keyset.File)
	}
	return err
}

// updateKeyset applies fn to the configured keyset under the store's lock
// and stores the result atomically (nothing is stored if fn fails).
// allowEmpty lets fn run on a keyset with no DEK (creating the first).
func (a *app) updateKeyset(allowEmpty bool, fn func(ks *core.Keyset) error) (where string, err error) {
	return a.withKeysetStore(func(cfg *config.Config, st core.KeysetStore) error {
		return st.Update(a.ctx, func(ks *core.Keyset) error {
			if len(ks.DEKs) == 0 && !allowEmpty {
				return a.keysetMissing(cfg)
			}
			return fn(ks)
		})
	})
}
