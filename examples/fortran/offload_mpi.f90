! offload_mpi.f90: Black-Scholes from an MPI application in Fortran. Every rank prices its own
! batch of European options on rfaas workers (`black_scholes` of the example function library,
! one batch at a time) and checks the prices against a local computation written here with the
! erfc intrinsic.
!
!   mpif90 -o offload_mpi_f $(pkg-config --variable=includedir rfaas)/rfaas.f90 offload_mpi.f90 \
!          $(pkg-config --libs rfaas)
!   mpirun -n 2 ./offload_mpi_f /tmp/rfaas/cluster.json target/release/libfunctions.so
!
! Arguments: CLUSTER_JSON LIBRARY [OPTIONS_PER_RANK [BATCH [HOT_TIMEOUT_MS]]].
program offload_mpi
    use, intrinsic :: iso_c_binding
    use mpi
    use rfaas
    implicit none

    integer :: ierr, rank, nranks, i, k, b, first, cnt, nbatches
    integer :: n, batch, bad, nargs, status
    integer :: flags(2), totals(2)
    integer(c_int64_t) :: hot
    integer(c_int) :: rc
    integer(c_size_t) :: got
    character(len=4096) :: cluster, library, arg
    real(c_double), allocatable :: opts(:, :), remote(:, :)
    real(c_double) :: local(2), err, max_err, seed
    type(c_ptr) :: session
    type(rfaas_session_report) :: report

    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
    call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
    nargs = command_argument_count()
    if (nargs < 2) then
        if (rank == 0) print '(a)', 'usage: offload_mpi_f CLUSTER_JSON LIBRARY [OPTIONS [BATCH [HOT_TIMEOUT_MS]]]'
        call MPI_Finalize(ierr)
        stop 2
    end if
    call get_command_argument(1, cluster)
    call get_command_argument(2, library)
    n = 20000
    batch = 1000
    hot = 100
    if (nargs >= 3) then
        call get_command_argument(3, arg)
        read (arg, *) n
    end if
    if (nargs >= 4) then
        call get_command_argument(4, arg)
        read (arg, *) batch
    end if
    if (nargs >= 5) then
        call get_command_argument(5, arg)
        read (arg, *) hot
    end if

    ! Options as records of 5 doubles (spot, strike, rate, volatility, time): column i is one.
    allocate (opts(5, n), remote(2, n))
    seed = 0.1d0 + 0.37d0 * rank
    do i = 1, n
        opts(1, i) = 50d0 + 100d0 * next(seed)
        opts(2, i) = 50d0 + 100d0 * next(seed)
        opts(3, i) = 0.1d0 * next(seed)
        opts(4, i) = 0.05d0 + 0.55d0 * next(seed)
        opts(5, i) = 0.1d0 + 2.9d0 * next(seed)
    end do

    rc = rfaas_session_start(MPI_COMM_WORLD, trim(cluster), trim(library), 'black_scholes', 1, &
                             batch * 40, batch * 16, hot, session)
    if (rc /= RFAAS_STATUS_OK) then
        print '(a,i0,2a)', 'offload_mpi_f: rank ', rank, ': rfaas_session_start: ', &
            rfaas_error_message(rc)
        call MPI_Finalize(ierr)
        stop 1
    end if

    nbatches = (n + batch - 1) / batch
    bad = 0
    status = 0
    max_err = 0d0
    do b = 0, nbatches - 1
        first = b * batch + 1
        cnt = min(batch, n - first + 1)
        rc = rfaas_offload(session, 'black_scholes' // c_null_char, opts(:, first:), &
                           int(cnt * 40, c_size_t), remote(:, first:), int(cnt * 16, c_size_t), got)
        if (rc /= RFAAS_STATUS_OK) then
            print '(a,i0,2a)', 'offload_mpi_f: rank ', rank, ': rfaas_offload: ', &
                rfaas_error_message(rc)
            status = 1
            exit
        end if
        if (got /= int(cnt * 16, c_size_t)) then
            print '(a,i0,a,i0)', 'offload_mpi_f: wrong output length on rank ', rank, ': ', got
            status = 1
            exit
        end if
        do i = first, first + cnt - 1
            call price(opts(:, i), local)
            do k = 1, 2
                err = abs(remote(k, i) - local(k))
                max_err = max(max_err, err)
                if (.not. (err <= 1d-9 * max(1d0, abs(local(k))))) bad = bad + 1
            end do
        end do
    end do

    rc = rfaas_session_finish(session, report)
    if (rc /= RFAAS_STATUS_OK) then
        print '(2a)', 'offload_mpi_f: rfaas_session_finish: ', rfaas_error_message(rc)
        status = 1
    end if
    call rfaas_session_free(session)

    if (status == 0 .and. bad == 0) then
        print '(a,i0,a,i0,a,es9.2,a)', 'rank ', rank, ': ', n, ' options, max |error| ', max_err, ': ok'
    else
        print '(a,i0,a,i0,a)', 'rank ', rank, ': ', bad, ' wrong prices: WRONG'
    end if
    flags = [status, bad]
    call MPI_Reduce(flags, totals, 2, MPI_INTEGER, MPI_SUM, 0, MPI_COMM_WORLD, ierr)
    if (rank == 0) then
        if (totals(1) == 0 .and. totals(2) == 0 .and. report%is_root == 1) then
            print '(i0,a,i0,a)', nranks, ' ranks, ', report%invocations, &
                ' offloads in the session report: result correct on every rank'
        else
            print '(a,i0,a,i0)', 'FAILED: ranks with errors ', totals(1), ', wrong prices ', totals(2)
            status = 1
        end if
    end if
    call MPI_Bcast(status, 1, MPI_INTEGER, 0, MPI_COMM_WORLD, ierr)
    call MPI_Finalize(ierr)
    if (status /= 0) stop 1

contains

    ! A reproducible number in [0, 1) (fractional part of a chaotic map).
    function next(s) result(u)
        real(c_double), intent(inout) :: s
        real(c_double) :: u
        s = modulo(s * 9821d0 + 0.211327d0, 1d0)
        u = s
    end function next

    real(c_double) function phi(x)
        real(c_double), intent(in) :: x
        phi = 0.5d0 * erfc(-x / sqrt(2d0))
    end function phi

    ! Call and put prices of option o = (spot, strike, rate, volatility, time).
    subroutine price(o, p)
        real(c_double), intent(in) :: o(5)
        real(c_double), intent(out) :: p(2)
        real(c_double) :: df, sst, d1, d2
        df = o(2) * exp(-o(3) * o(5))
        sst = o(4) * sqrt(o(5))
        if (sst == 0d0) then
            p(1) = max(o(1) - df, 0d0)
            p(2) = max(df - o(1), 0d0)
            return
        end if
        d1 = (log(o(1) / o(2)) + (o(3) + 0.5d0 * o(4) * o(4)) * o(5)) / sst
        d2 = d1 - sst
        p(1) = o(1) * phi(d1) - df * phi(d2)
        p(2) = df * phi(-d2) - o(1) * phi(-d1)
    end subroutine price
end program offload_mpi
