# find_package(prequant) for C++ users of an installed prequant.
include(CMakeFindDependencyMacro)
find_dependency(Protobuf)
find_dependency(nlohmann_json 3)
# prequant::report (the weight report) links cairo, found through pkg-config.
find_dependency(PkgConfig)
pkg_check_modules(CAIRO QUIET IMPORTED_TARGET cairo)
include("${CMAKE_CURRENT_LIST_DIR}/prequantTargets.cmake")
