package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/varlink"
)

// errDetail is what an error's API parameters are made of: the culprit an
// *actors.Error names, and the text (the whole chain's, so no context the
// handlers added is lost).
type errDetail struct {
	vm, name, field, status, message string
}

func detailOf(err error) errDetail {
	d := errDetail{message: err.Error()}
	var ae *actors.Error
	if errors.As(err, &ae) {
		d.vm, d.name, d.field, d.status = ae.VM, ae.Name, ae.Field, string(ae.Status)
	}
	if errors.Is(err, context.DeadlineExceeded) && d.message == context.DeadlineExceeded.Error() {
		d.message = "the call did not finish within the daemon's time limit (api.request_timeout); the daemon log (journalctl -u paddock) says what it waited on"
	}
	return d
}

// errorRow maps one class of error (errdefs.Class), or one kind within it,
// to the varlink error a client sees.
type errorRow struct {
	class  error
	kind   error // nil: any error of the class
	name   string
	params func(errDetail) map[string]any
}

func vmParams(d errDetail) map[string]any { return map[string]any{"vm": d.vm, "message": d.message} }
func imageParams(d errDetail) map[string]any {
	return map[string]any{"image": d.vm, "message": d.message}
}
func fieldParams(d errDetail) map[string]any {
	return map[string]any{"field": d.field, "message": d.message}
}
func messageParams(d errDetail) map[string]any { return map[string]any{"message": d.message} }

// errorTable is read top to bottom: the first row whose class is the
// error's and whose kind (if any) the error is, wins. An error of no class
// is Internal.
var errorTable = []errorRow{
	{errdefs.ErrNotFound, actors.ErrNotFound, api.ErrVMNotFound, vmParams},
	{errdefs.ErrNotFound, actors.ErrImageNotFound, api.ErrImageNotFound, imageParams},
	{errdefs.ErrNotFound, imaging.ErrImageNotFound, api.ErrImageNotFound, imageParams},
	{errdefs.ErrNotFound, actors.ErrWorkspaceNotFound, api.ErrWorkspaceNotFound, func(d errDetail) map[string]any {
		return map[string]any{"workspace": d.vm, "message": d.message}
	}},
	// Anything else not found was named by the caller (a kernel, an image
	// in a source): the argument is wrong.
	{errdefs.ErrNotFound, nil, api.ErrInvalidArgument, fieldParams},
	{errdefs.ErrAlreadyExists, nil, api.ErrNameInUse, func(d errDetail) map[string]any {
		return map[string]any{"name": d.name, "message": d.message}
	}},
	{errdefs.ErrInvalidArgument, nil, api.ErrInvalidArgument, fieldParams},
	{errdefs.ErrFailedPrecondition, actors.ErrImageInUse, api.ErrImageInUse, imageParams},
	{errdefs.ErrFailedPrecondition, nil, api.ErrInvalidState, func(d errDetail) map[string]any {
		return map[string]any{"vm": d.vm, "status": d.status, "message": d.message}
	}},
	{errdefs.ErrPermissionDenied, nil, api.ErrPermissionDenied, vmParams},
	{errdefs.ErrUnavailable, nil, api.ErrUnavailable, messageParams},
	{errdefs.ErrNotImplemented, nil, api.ErrUnavailable, messageParams},
	{errdefs.ErrDeadlineExceeded, nil, api.ErrTimeout, vmParams},
	{errdefs.ErrCanceled, nil, api.ErrInternal, messageParams},
	{errdefs.ErrInternal, nil, api.ErrInternal, messageParams},
}

// mapError turns a Go error into a named io.paddock.v1 error.
func mapError(err error) *varlink.Error {
	var ve *varlink.Error
	if errors.As(err, &ve) {
		return ve
	}
	class := errdefs.Class(err)
	for _, r := range errorTable {
		if r.class == class && (r.kind == nil || errors.Is(err, r.kind)) {
			return varlink.NewError(r.name, r.params(detailOf(err)))
		}
	}
	return varlink.NewError(api.ErrInternal, messageParams(detailOf(err)))
}

// refused is the error a connection refused at accept reads: which limit,
// and the config key that sets it.
func refused(c config.API) func(varlink.Peer, error) *varlink.Error {
	return func(_ varlink.Peer, cause error) *varlink.Error {
		key := fmt.Sprintf("api.max_connections = %d", c.MaxConnections)
		switch {
		case errors.Is(cause, varlink.ErrPerUIDLimit):
			key = fmt.Sprintf("api.max_connections_per_user = %d; each running paddock command, event stream or exec session holds one", c.MaxConnectionsPerUser)
		case errors.Is(cause, varlink.ErrUserConnLimit):
			key = fmt.Sprintf("api.max_connections = %d less api.admin_reserved_connections = %d", c.MaxConnections, c.AdminReservedConnections)
		}
		return varlink.NewError(api.ErrUnavailable, messageParams(errDetail{message: fmt.Sprintf("paddockd refused the connection: %v (%s)", cause, key)}))
	}
}
