package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keyctl/keyctl/core"
)

// readInput reads the command's input: the file named by arg, or stdin when
// arg is "" or "-". More than limit bytes is an error wrapping
// core.ErrMalformed via tooLarge. It returns the input and a name for it in
// messages.
func (a *app) readInput(arg string, limit int, tooLarge func(n int) error) ([]byte, string, error) {
	var r io.Reader
	name := arg
	if arg == "" || arg == "-" {
		r, name = a.stdin, "stdin"
	} else {
		f, err := os.Open(arg)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil, name, usagef("input: %v", pathErr(err))
			}
			return nil, name, fmt.Errorf("input: %w", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.IsDir() {
			return nil, name, usagef("input %s is a directory", arg)
		}
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, name, fmt.Errorf("read %s: %w", name, err)
	}
	if len(b) > limit {
		return nil, name, fmt.Errorf("%s: %w", name, tooLarge(limit))
	}
	return b, name, nil
}

// pathErr renders an *fs.PathError as "path: reason" without the operation.
func pathErr(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}

// writeFileAtomic writes data to path so that path holds either its old
// content or all of data, never a mix: it writes a temporary file in the
// same directory with mode perm, syncs it, and moves it into place, then
// syncs the directory. With replace false an existing path is never
// overwritten (the error wraps fs.ErrExist), even if it appears meanwhile.
func writeFileAtomic(path string, data []byte, perm fs.FileMode, replace bool) (err error) {
	if replace {
		// Replace what a symlink points at, not the link itself.
		if real, err := filepath.EvalSymlinks(path); err == nil {
			path = real
		}
	} else if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %w", path, fs.ErrExist)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return usagef("write %s: directory %s does not exist", path, dir)
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("write %s: in directory %s: %w", path, dir, pe.Err)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if replace {
		if err := os.Rename(tmpName, path); err != nil {
			return fmt.Errorf("write %s: %v", path, pathErr(err))
		}
	} else {
		// link(2) fails if path exists, so a file created meanwhile is not
		// clobbered.
		if err := os.Link(tmpName, path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s: %w", path, fs.ErrExist)
			}
			var le *os.LinkError
			if errors.As(err, &le) {
				return fmt.Errorf("write %s: %v", path, le.Err)
			}
			return fmt.Errorf("write %s: %w", path, err)
		}
		_ = os.Remove(tmpName)
	}
	syncDir(dir)
	return nil
}

// syncDir makes a rename in dir durable, where the platform allows.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// errExists reports a file that keyctl refuses to overwrite. It matches
// fs.ErrExist.
type errExists struct{ path string }

func (e *errExists) Error() string        { return e.path + " already exists; refusing to overwrite it" }
func (e *errExists) Is(target error) bool { return target == fs.ErrExist }

// existsError reports that keyctl refuses to overwrite path.
func existsError(path, flag string) error {
	var err error = &errExists{path: path}
	if flag != "" {
		return withHint(err, "pass "+flag+" to replace it, or choose another file")
	}
	return err
}

// writeNew writes data to a file that must not exist yet, unless force.
func writeNew(path string, data []byte, perm fs.FileMode, force bool, flag string) error {
	err := writeFileAtomic(path, data, perm, force)
	if errors.Is(err, fs.ErrExist) {
		return existsError(path, flag)
	}
	return err
}

// fileMode returns the permission bits of path, or def if it cannot be read.
func fileMode(path string, def fs.FileMode) fs.FileMode {
	if fi, err := os.Stat(path); err == nil {
		return fi.Mode().Perm()
	}
	return def
}

// readFileLimit reads path, refusing more than limit bytes (the error wraps
// core.ErrMalformed).
func readFileLimit(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", path, limit, core.ErrMalformed)
	}
	return b, nil
}
