// Package repocheck holds checks of the repository itself rather than of
// ctsyncd's code: its tests read the tracked files. It has no code of its
// own; scripts/test.sh runs its tests among the static checks.
package repocheck
