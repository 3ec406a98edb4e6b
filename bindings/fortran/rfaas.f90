! rfaas.f90: Fortran bindings (ISO_C_BINDING) of the rfaas C API for MPI programs: the session
! and offload calls. Installed beside rfaas.h; compile it with your program:
!
!   mpif90 -o app $(pkg-config --variable=includedir rfaas)/rfaas.f90 app.f90 \
!          $(pkg-config --libs rfaas)
!
! Every function returns an integer(c_int) status: RFAAS_STATUS_OK (0) or an error code, and
! rfaas_error_message() gives the message of the last failed call on this thread. Strings given
! to the C interfaces directly end with c_null_char ("echo"//c_null_char); the helpers
! rfaas_session_start and rfaas_error_message take and return Fortran strings.
! Buffers are passed with their length in bytes (input_len = size(x) * c_sizeof(x(1))).
! A session belongs to the thread that started it; start and finish are collective over the
! communicator, offloads make no MPI call. Finish the session before MPI_Finalize.
module rfaas
    use, intrinsic :: iso_c_binding
    implicit none
    private :: c_strlen

    integer(c_int), parameter :: RFAAS_STATUS_OK = 0
    integer(c_int), parameter :: RFAAS_STATUS_NULL_POINTER = 1
    integer(c_int), parameter :: RFAAS_STATUS_INVALID_ARGUMENT = 2
    integer(c_int), parameter :: RFAAS_STATUS_UNKNOWN_FUNCTION = 3
    integer(c_int), parameter :: RFAAS_STATUS_INPUT_TOO_LARGE = 4
    integer(c_int), parameter :: RFAAS_STATUS_OUTPUT_TOO_SMALL = 5
    integer(c_int), parameter :: RFAAS_STATUS_TIMEOUT = 6
    integer(c_int), parameter :: RFAAS_STATUS_EXECUTOR_GONE = 7
    integer(c_int), parameter :: RFAAS_STATUS_BUSY = 8
    integer(c_int), parameter :: RFAAS_STATUS_FUNCTION_FAILED = 9
    integer(c_int), parameter :: RFAAS_STATUS_CLUSTER = 10
    integer(c_int), parameter :: RFAAS_STATUS_MPI = 11
    integer(c_int), parameter :: RFAAS_STATUS_FINISHED = 12
    integer(c_int), parameter :: RFAAS_STATUS_INTERNAL = 13
    integer(c_int), parameter :: RFAAS_STATUS_INIT_FAILED = 14

    ! rfaas_session_config of rfaas.h (fill with rfaas_session_config_init first).
    type, bind(c) :: rfaas_session_config
        type(c_ptr) :: cluster
        type(c_ptr) :: library_path
        type(c_ptr) :: functions
        integer(c_int32_t) :: cores_per_rank
        integer(c_int32_t) :: input_capacity
        integer(c_int32_t) :: output_capacity
        integer(c_int32_t) :: slots
        integer(c_int64_t) :: hot_timeout_ms
        integer(c_int32_t) :: timeout_ms
    end type rfaas_session_config

    ! rfaas_session_report of rfaas.h (totals filled on rank 0, is_root = 1).
    type, bind(c) :: rfaas_session_report
        integer(c_int) :: is_root
        integer(c_int) :: ranks
        integer(c_int64_t) :: invocations
        integer(c_int64_t) :: errors
        integer(c_int) :: failed_ranks
        integer(c_int64_t) :: p50_ns
        integer(c_int64_t) :: p99_ns
        integer(c_int64_t) :: execution_ns
        integer(c_int64_t) :: hot_polling_ns
        integer(c_int64_t) :: lease
    end type rfaas_session_report

    interface
        function rfaas_session_config_init(cfg) bind(c, name="rfaas_session_config_init") &
                result(rc)
            import :: c_int, rfaas_session_config
            type(rfaas_session_config), intent(out) :: cfg
            integer(c_int) :: rc
        end function rfaas_session_config_init

        ! Collective over the Fortran communicator `comm` (MPI_Comm_f2c is applied).
        function rfaas_session_init_f(comm, cfg, session) bind(c, name="rfaas_session_init_f") &
                result(rc)
            import :: c_int, c_ptr, rfaas_session_config
            integer(c_int), value :: comm
            type(rfaas_session_config), intent(in) :: cfg
            type(c_ptr), intent(out) :: session
            integer(c_int) :: rc
        end function rfaas_session_init_f

        function rfaas_session_rank(session, rank, size) bind(c, name="rfaas_session_rank") &
                result(rc)
            import :: c_int, c_ptr
            type(c_ptr), value :: session
            integer(c_int), intent(out) :: rank, size
            integer(c_int) :: rc
        end function rfaas_session_rank

        function rfaas_offload(session, name, input, input_len, output, output_capacity, &
                output_len) bind(c, name="rfaas_offload") result(rc)
            import :: c_int, c_ptr, c_char, c_size_t
            type(c_ptr), value :: session
            character(kind=c_char), dimension(*), intent(in) :: name
            type(*), dimension(*), intent(in) :: input
            integer(c_size_t), value :: input_len
            type(*), dimension(*), intent(inout) :: output
            integer(c_size_t), value :: output_capacity
            integer(c_size_t), intent(out) :: output_len
            integer(c_int) :: rc
        end function rfaas_offload

        ! The input may be reused on return; the output buffer is given to rfaas_wait.
        function rfaas_offload_async(session, name, input, input_len, output_capacity, &
                offload) bind(c, name="rfaas_offload_async") result(rc)
            import :: c_int, c_ptr, c_char, c_size_t
            type(c_ptr), value :: session
            character(kind=c_char), dimension(*), intent(in) :: name
            type(*), dimension(*), intent(in) :: input
            integer(c_size_t), value :: input_len
            integer(c_size_t), value :: output_capacity
            type(c_ptr), intent(out) :: offload
            integer(c_int) :: rc
        end function rfaas_offload_async

        function rfaas_wait(session, offload, output, output_capacity, output_len) &
                bind(c, name="rfaas_wait") result(rc)
            import :: c_int, c_ptr, c_size_t
            type(c_ptr), value :: session
            type(c_ptr), value :: offload
            type(*), dimension(*), intent(inout) :: output
            integer(c_size_t), value :: output_capacity
            integer(c_size_t), intent(out) :: output_len
            integer(c_int) :: rc
        end function rfaas_wait

        function rfaas_session_finish(session, report) bind(c, name="rfaas_session_finish") &
                result(rc)
            import :: c_int, c_ptr, rfaas_session_report
            type(c_ptr), value :: session
            type(rfaas_session_report), intent(out) :: report
            integer(c_int) :: rc
        end function rfaas_session_finish

        subroutine rfaas_session_free(session) bind(c, name="rfaas_session_free")
            import :: c_ptr
            type(c_ptr), value :: session
        end subroutine rfaas_session_free

        function rfaas_last_error() bind(c, name="rfaas_last_error") result(p)
            import :: c_ptr
            type(c_ptr) :: p
        end function rfaas_last_error

        function rfaas_status_name(code) bind(c, name="rfaas_status_name") result(p)
            import :: c_int, c_ptr
            integer(c_int), value :: code
            type(c_ptr) :: p
        end function rfaas_status_name

        function c_strlen(s) bind(c, name="strlen") result(n)
            import :: c_ptr, c_size_t
            type(c_ptr), value :: s
            integer(c_size_t) :: n
        end function c_strlen
    end interface

contains

    ! Starts a session over the Fortran communicator `comm` with Fortran strings: `cluster` (""
    ! for $RFAAS_CLUSTER), the function library's path and comma-separated function names;
    ! workers per rank, largest input and output in bytes, hot timeout (-1 hot, 0 warm, N ms);
    ! the other settings are the defaults. Collective.
    function rfaas_session_start(comm, cluster, library, functions, cores_per_rank, &
            input_capacity, output_capacity, hot_timeout_ms, session) result(rc)
        integer, intent(in) :: comm
        character(len=*), intent(in) :: cluster, library, functions
        integer, intent(in) :: cores_per_rank, input_capacity, output_capacity
        integer(c_int64_t), intent(in) :: hot_timeout_ms
        type(c_ptr), intent(out) :: session
        integer(c_int) :: rc
        character(kind=c_char, len=:), allocatable, target :: c_cluster, c_library, c_functions
        type(rfaas_session_config) :: cfg

        session = c_null_ptr
        rc = rfaas_session_config_init(cfg)
        if (rc /= RFAAS_STATUS_OK) return
        c_cluster = trim(cluster) // c_null_char
        c_library = trim(library) // c_null_char
        c_functions = trim(functions) // c_null_char
        if (len_trim(cluster) > 0) cfg%cluster = c_loc(c_cluster)
        cfg%library_path = c_loc(c_library)
        cfg%functions = c_loc(c_functions)
        cfg%cores_per_rank = int(cores_per_rank, c_int32_t)
        cfg%input_capacity = int(input_capacity, c_int32_t)
        cfg%output_capacity = int(output_capacity, c_int32_t)
        cfg%hot_timeout_ms = hot_timeout_ms
        rc = rfaas_session_init_f(int(comm, c_int), cfg, session)
    end function rfaas_session_start

    ! "RFAAS_STATUS_...: message" for the status `rc` of the last failed call on this thread.
    function rfaas_error_message(rc) result(msg)
        integer(c_int), intent(in) :: rc
        character(len=:), allocatable :: msg
        msg = c_to_f(rfaas_status_name(rc)) // ": " // c_to_f(rfaas_last_error())
    end function rfaas_error_message

    ! A copy of the NUL-terminated C string `p`.
    function c_to_f(p) result(s)
        type(c_ptr), intent(in) :: p
        character(len=:), allocatable :: s
        character(kind=c_char), pointer :: chars(:)
        integer(c_size_t) :: n, i
        if (.not. c_associated(p)) then
            s = ""
            return
        end if
        n = c_strlen(p)
        call c_f_pointer(p, chars, [n])
        allocate(character(len=n) :: s)
        do i = 1, n
            s(i:i) = chars(i)
        end do
    end function c_to_f
end module rfaas
